"""The engine's live session (engine/runtime/live.py): requests that join between steps get the
tokens :meth:`LLM.generate` gives them, their streamed pieces join to the output's text, an
aborted request frees its blocks at once (also with a step in flight), and a failed step leaves
no request holding blocks. The model is the ``tiny`` preset in float32, as in
test_engine_runtime.py."""

from __future__ import annotations

import pytest
from test_engine_runtime import make_llm, one_thread, prompts, tiny  # noqa: F401 - module fixtures

from dseval.engine.api import LLM, LiveSession, SamplingParams
from dseval.engine.runtime.outputs import GenerationOutput

PARAMS = [SamplingParams(max_tokens=10, ignore_eos=True), SamplingParams(max_tokens=7, ignore_eos=True,
                                                                         temperature=0.8, seed=3)]


def run_to_end(session: LiveSession) -> int:
    steps = 0
    while session.has_work():
        session.step()
        steps += 1
    return steps


def idle(llm: LLM) -> bool:
    bm = llm.block_manager
    return not llm.scheduler.has_work() and bm.num_free_blocks == bm.num_blocks


def test_requests_joining_between_steps_get_the_generate_tokens(tiny) -> None:  # noqa: F811
    llm = make_llm(tiny)
    ps = prompts(6, seed=1)
    params = [PARAMS[i % 2] for i in range(6)]
    want = llm.generate(ps, params)
    session = LiveSession(llm)
    outs: dict[int, GenerationOutput] = {}
    pieces: dict[int, list[str]] = {i: [] for i in range(6)}

    def add(i: int) -> None:
        session.add(ps[i], params[i], lambda out: outs.__setitem__(i, out), pieces[i].append)

    for i in range(3):
        add(i)
    for _ in range(4):  # the first three are decoding when the others arrive
        session.step()
    for i in range(3, 6):
        add(i)
    run_to_end(session)
    assert [outs[i].token_ids for i in range(6)] == [w.token_ids for w in want]
    assert [outs[i].text for i in range(6)] == [w.text for w in want]
    assert all("".join(pieces[i]) == outs[i].text for i in range(6))
    assert sum(len(p) for p in pieces.values()) > 12  # pieces came out step by step
    assert idle(llm)


def test_an_aborted_request_frees_its_blocks_and_the_others_go_on(tiny) -> None:  # noqa: F811
    llm = make_llm(tiny)
    ps = prompts(3, seed=2)
    want = llm.generate(ps[:1], PARAMS[0])[0]
    session = LiveSession(llm)
    outs: list[GenerationOutput] = []
    fired: list[object] = []
    keep = session.add(ps[0], PARAMS[0], outs.append)
    gone = session.add(ps[1], SamplingParams(max_tokens=500, ignore_eos=True), fired.append, fired.append)
    never = session.add(ps[2], PARAMS[0], fired.append)
    session.abort(never)  # still waiting
    for _ in range(3):
        session.step()
    assert gone in llm.scheduler.running and gone in llm._inflight.batch.seqs  # overlap scheduling
    held = len(gone.block_table)
    free = llm.block_manager.num_free_blocks
    fired.clear()
    session.abort(gone)  # with a decode step in flight that has a row for it
    assert llm.block_manager.num_free_blocks == free + held and gone not in llm.scheduler.running
    run_to_end(session)
    assert [o.token_ids for o in outs] == [want.token_ids] and fired == []
    assert idle(llm)
    session.abort(keep)  # finished already: nothing happens


def test_a_failed_step_drops_every_request(tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    llm = make_llm(tiny)
    ps = prompts(2, seed=3)
    session = LiveSession(llm)
    for p in ps:
        session.add(p, PARAMS[0], lambda out: None)
    session.step()

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    with monkeypatch.context() as patch:
        patch.setattr(llm.runner, "execute", broken)
        with pytest.raises(RuntimeError, match="device lost"):
            run_to_end(session)
    assert idle(llm) and not session.has_work()
    assert llm.generate(ps[:1], PARAMS[0])[0].token_ids == make_llm(tiny).generate(ps[:1], PARAMS[0])[0].token_ids
