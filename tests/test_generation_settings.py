"""Run-level generation settings reach every request, are part of a run's identity, and chat
answers lose their reasoning block before scoring (the raw text kept)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import replay_run
from dseval.config import RunConfig
from dseval.errors import UserError
from dseval.reasoning import strip_reasoning
from dseval.scoring.sampling import SamplingProtocol, chat_requests, generate_requests
from dseval.task import PromptContext


@pytest.mark.parametrize(("text", "answer"), [
    ("<think>2+2 is 4</think>\n\nThe answer is 4.", "The answer is 4."),
    ("  <think>long thought, cut by the token limit", ""),
    ("template opened it</think> 42", "42"),
    ("no reasoning here", "no reasoning here"),
    ("an answer that mentions <think> and </think> later", "an answer that mentions <think> and </think> later"),
])
def test_strip_reasoning(text: str, answer: str) -> None:
    assert strip_reasoning(text) == answer


def context(**settings) -> PromptContext:
    return PromptContext(shots=0, chat=True, seed=1, samples=1, render_chat=json.dumps, **settings)


def test_run_settings_replace_the_task_protocol() -> None:
    aime = SamplingProtocol(samples=16, temperature=0.7)
    default = chat_requests([{"role": "user", "content": "q"}], "d", context(), 64, aime)
    assert len(default) == 16 and {r.temperature for r in default} == {0.7}
    chosen = chat_requests([{"role": "user", "content": "q"}], "d", context(temperature=0.3, top_p=0.9, top_k=5), 64, aime)
    assert {(r.temperature, r.top_p, r.top_k) for r in chosen} == {(0.3, 0.9, 5)}
    (plain,) = generate_requests("p", "d", context(temperature=0.6), (), 8)
    assert (plain.temperature, plain.top_p, plain.top_k) == (0.6, 1.0, 0)


def test_system_prompt_goes_first_unless_the_task_sets_one() -> None:
    (req,) = chat_requests([{"role": "user", "content": "q"}], "d", context(system_prompt="Be brief."), 8)
    assert req.messages[0] == {"role": "system", "content": "Be brief."}
    (own,) = chat_requests([{"role": "system", "content": "task"}, {"role": "user", "content": "q"}], "d",
                           context(system_prompt="Be brief."), 8)
    assert [m["content"] for m in own.messages] == ["task", "q"]
    assert json.loads(context(system_prompt="S").as_prompt("q"))[0] == {"role": "system", "content": "S"}


def test_generation_settings_are_part_of_the_identity(tmp_path: Path) -> None:
    base = RunConfig(tasks=("math500",), model="replay:x", out=tmp_path)
    assert base.identity()["temperature"] is None and base.identity()["strip_reasoning"] is None
    assert RunConfig(tasks=("math500",), model="replay:x", out=tmp_path, temperature=0.7).identity() != base.identity()
    with pytest.raises(UserError, match="--top-p"):
        RunConfig(tasks=("math500",), model="replay:x", out=tmp_path, top_p=0.0)


def test_chat_replay_strips_reasoning_by_default(tmp_path: Path, data_dir: Path) -> None:
    """An unfinished reasoning block holds the right answer but no final answer: stripped (the
    default for chat runs) it scores 0 and the raw text stays in the sample; kept, it scores 1."""
    rows = [json.loads(line) for line in (data_dir / "math500" / "test.jsonl").read_text().splitlines()[:2]]
    records = [{"id": r["unique_id"], "output": f"<think>so the result is \\boxed{{{r['answer']}}}"} for r in rows]
    ids = ",".join(r["unique_id"] for r in rows)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stripped = replay_run(tmp_path / "a", "math500", records, data_dir, "--chat", "--ids", ids)
    kept = replay_run(tmp_path / "b", "math500", records, data_dir, "--chat", "--ids", ids, "--no-strip-reasoning")
    assert stripped["metrics"]["acc"] == 0.0 and kept["metrics"]["acc"] == 1.0
    sample = json.loads((tmp_path / "a" / "math500-run" / "math500" / "samples.jsonl").read_text().splitlines()[0])
    assert sample["output"] == "" and sample["details"]["raw_outputs"][0].startswith("<think>")
