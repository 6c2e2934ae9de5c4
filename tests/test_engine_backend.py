"""The engine as a harness backend and its own entry points (``dseval generate`` / ``chat``),
on the ``tiny`` preset (real V3 tokenizer, random weights), CPU."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from dseval.backends.engine import EngineBackend
from dseval.backends.engine_entrypoints import chat_loop, generate_file, read_prompts
from dseval.engine.api import LLM, EngineConfig
from dseval.engine.api import SamplingParams

from dseval.backends.base import BackendOptions
from dseval.backends.registry import load_backend
from dseval.errors import UserError
from dseval.requests import GenerateRequest, LoglikelihoodRequest

CPU = BackendOptions(device="cpu", batch_size=16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy-model ops are tiny; extra intra-op threads only spin on a shared box. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backend() -> EngineBackend:
    b = load_backend("engine:tiny", CPU)
    assert isinstance(b, EngineBackend)
    return b


def direct_logprob(b: EngineBackend, tokens: list[int], start: int) -> tuple[float, bool]:
    """Continuation log-prob and greedy flag from one full-sequence forward pass."""
    from dseval.engine.model.attention_metadata import AttentionMetadata

    model, config = b.llm.model, b.llm.config
    T, bs = len(tokens), 16
    nb = -(-T // bs)
    caches = [torch.zeros(nb, bs, model.kv_cache_row_width(config)) for _ in range(model.num_attention_layers)]
    meta = AttentionMetadata(torch.tensor([0, T]), torch.tensor([T]), torch.arange(nb)[None], torch.arange(T),
                             caches, absorbed=False)
    logp = model.compute_logits(model(torch.tensor(tokens), torch.arange(T), meta)).log_softmax(-1)
    rows = range(start, T)
    lp = sum(float(logp[p - 1, tokens[p]]) for p in rows)
    return lp, all(int(logp[p - 1].argmax()) == tokens[p] for p in rows)


def test_from_spec_defaults_and_option_errors(backend):
    assert backend.llm.dtype == torch.float32 and backend.llm.device.type == "cpu"
    assert "tiny" in backend.description and "float32" in backend.description
    with pytest.raises(UserError, match="dtype"):
        EngineBackend.from_spec("tiny", BackendOptions(device="cpu", dtype="float8"))
    with pytest.raises(UserError, match="speculative"):
        EngineBackend.from_spec("tiny", BackendOptions(device="cpu", speculative="eagle"))
    with pytest.raises(UserError):
        EngineBackend.from_spec("no-such-preset-or-dir", CPU)


def test_prefill_chunk_option_chunks_prompts_and_keeps_scores(backend):
    """--max-num-batched-tokens reaches the scheduler: a 16-token budget prefills the prompt in
    several steps, and the scores equal the one-step prefill's."""
    small = EngineBackend.from_spec("tiny", BackendOptions(device="cpu", batch_size=16, max_num_batched_tokens=16))
    req = LoglikelihoodRequest("The quick brown fox jumps over the lazy dog near the quiet river bank, then", " sleeps")
    tokens, _ = small.encode_pair(req.context, req.continuation)
    assert len(tokens) > 16
    before = small.llm.stats.prefill_steps
    got = small.loglikelihood([req])[0]
    assert small.llm.stats.prefill_steps - before >= -(-len(tokens) // 16)
    want = backend.loglikelihood([req])[0]
    assert got.logprob == pytest.approx(want.logprob, abs=1e-4) and got.is_greedy == want.is_greedy


def test_token_boundary_rule_and_bos(backend):
    tok = backend.tokenizer
    bos = backend.bos_id
    assert bos is not None
    # Trailing context whitespace moves to the continuation.
    assert backend.encode_pair("Answer: ", "A") == backend.encode_pair("Answer:", " A")
    tokens, start = backend.encode_pair("Answer:", " A")
    assert tokens[0] == bos and tokens[1:start] == tok.encode("Answer:") and tokens[start:] == tok.encode(" A")
    # Empty context: scored right after BOS.
    tokens, start = backend.encode_pair("", "Hello world")
    assert start == 1 and tokens == [bos] + tok.encode("Hello world")
    # A continuation that merges with the context's last characters: the whole string is
    # encoded once and the continuation is what lies beyond the context's own encoding.
    ctx, cont = "The answer is hel", "lo"
    tokens, start = backend.encode_pair(ctx, cont)
    assert tokens[1:] == tok.encode(ctx + cont) and start == 1 + len(tok.encode(ctx))
    # Too long for the context: the oldest context tokens go, BOS and continuation stay.
    long_ctx = "word " * 60
    full, full_start = backend.encode_pair(long_ctx, "end")
    limit = backend.llm.max_model_len
    try:
        backend.llm.max_model_len = len(full) - 10
        cut, cut_start = backend.encode_pair(long_ctx, "end")
    finally:
        backend.llm.max_model_len = limit
    assert len(cut) == len(full) - 10 and cut[0] == bos and cut[1:] == full[11:]
    assert cut[cut_start:] == full[full_start:]
    # Prompts get exactly one BOS, also when a chat template already wrote it.
    chat = backend.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert backend.encode_prompt(chat).count(bos) == 1
    assert backend.encode_prompt("Hi")[:1] == [bos]
    # One batch of pairs (contexts shared, repeated, empty, merging) encodes as pair by pair.
    pairs = [("Answer: ", "A"), ("Answer:", " B"), ("", "Hello world"), (ctx, cont), ("Answer: ", "A"), (long_ctx, "end")]
    assert backend.encode_pairs(pairs) == [backend.encode_pair(c, x) for c, x in pairs]
    assert backend.encode_prompts(["Hi", chat]) == [backend.encode_prompt("Hi"), backend.encode_prompt(chat)]


def test_loglikelihood_values_greedy_flags_and_shared_context(backend):
    ctx = "Question: which planet is known as the red planet? Think about the colour of its soil. Answer:"
    choices = [" Mars", " Venus", " Jupiter", " Mercury"]
    reqs = [LoglikelihoodRequest(ctx, c) for c in choices] + [LoglikelihoodRequest("", "Mars is red")]
    # Interleave another question to check grouping keeps the answer order.
    reqs.insert(2, LoglikelihoodRequest("Other question? ", "Yes"))
    seen: dict[int, object] = {}
    stats = backend.llm.stats
    before_hits = stats.prefix_hit_tokens
    results = backend.loglikelihood(reqs, on_result=lambda i, r: seen.__setitem__(i, r))
    assert len(results) == len(reqs) == len(seen) and all(seen[i] == results[i] for i in range(len(reqs)))
    for req, res in zip(reqs, results):
        tokens, start = backend.encode_pair(req.context, req.continuation)
        want, greedy = direct_logprob(backend, tokens, start)
        assert res.logprob == pytest.approx(want, abs=1e-4) and res.is_greedy == greedy
        assert res.logprob < 0
    # Three of the four choices found the shared context (all its full 16-token blocks but
    # the one holding the last context token) in the prefix cache.
    ctx_tokens = len(backend.encode_pair(ctx, " Mars")[0]) - len(backend.tokenizer.encode(" Mars"))
    per_choice = (ctx_tokens - 1) // backend.llm.block_manager.block_size * backend.llm.block_manager.block_size
    assert per_choice > 0
    assert stats.prefix_hit_tokens - before_hits >= 3 * per_choice


def test_is_greedy_true_for_the_models_own_continuation(backend):
    ctx = "Once upon a time"
    out = backend.generate([GenerateRequest(ctx, max_tokens=3)])[0]
    # Use the greedy tokens only if their text re-encodes to the same tokens after the context.
    tokens, start = backend.encode_pair(ctx, out.text)
    gen_ids = backend.llm.generate([backend.encode_prompt(ctx)], SamplingParams(max_tokens=3, ignore_eos=True))[0].token_ids
    if tokens[start:] != gen_ids[: len(tokens) - start] or not out.text:
        pytest.skip("the greedy text does not re-tokenize to the same ids for this random model")
    res = backend.loglikelihood([LoglikelihoodRequest(ctx, out.text)])[0]
    assert res.is_greedy


def test_generate_stop_strings_limits_and_seeds(backend):
    prompt = "The weather today is"
    base = backend.generate([GenerateRequest(prompt, max_tokens=20)])[0]
    assert base.num_tokens <= 20 and base.finish_reason in ("length", "stop")
    if base.finish_reason == "length":
        assert base.num_tokens == 20
    text = base.text
    assert len(text) > 8, "random tiny model should produce some text in 20 tokens"
    stop = text[5:8]
    reqs = [
        GenerateRequest(prompt, max_tokens=20, stop=(stop,)),
        GenerateRequest(prompt, max_tokens=4),
        GenerateRequest("Something else entirely", max_tokens=6, temperature=1.0, top_p=0.9, seed=3),
    ]
    done: list[int] = []
    out = backend.generate(reqs, on_result=lambda i, r: done.append(i))
    assert sorted(done) == [0, 1, 2]
    assert out[0].text == text[: text.find(stop)] and out[0].finish_reason == "stop" and stop not in out[0].text
    assert out[1].num_tokens == 4 and out[1].finish_reason == "length" and text.startswith(out[1].text)
    # Same seed, same text, whatever else is in the batch.
    alone = backend.generate([reqs[2]])[0]
    assert alone.text == out[2].text
    with pytest.raises(UserError, match="top_p"):
        backend.generate([GenerateRequest(prompt, temperature=1.0, top_p=1.5)])


def test_generate_file_text_and_jsonl(backend, tmp_path: Path, monkeypatch):
    # Reuse the loaded backend (from_spec would load the preset again).
    monkeypatch.setattr(EngineBackend, "from_spec", classmethod(lambda cls, arg, options: backend))
    monkeypatch.setattr(EngineBackend, "close", lambda self: None)
    txt = tmp_path / "prompts.txt"
    txt.write_text("Hello there\n\nThe sky is\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    generate_file("tiny", txt, out, max_new_tokens=5, temperature=0.0, chat=False, options=CPU)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Hello there", "The sky is"]
    for r in rows:
        assert set(r) == {"prompt", "prompt_token_ids", "output", "output_token_ids"}
        assert r["prompt_token_ids"] == backend.encode_prompt(r["prompt"])
        assert 1 <= len(r["output_token_ids"]) <= 5
        assert r["output"] == backend.tokenizer.decode(
            [t for t in r["output_token_ids"] if t != backend.tokenizer.eos_id])
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(json.dumps({"prompt": "Hello there"}) + "\n", encoding="utf-8")
    out2 = tmp_path / "out2.jsonl"
    generate_file("tiny", jsonl, out2, max_new_tokens=5, temperature=0.0, chat=True, options=CPU)
    row = json.loads(out2.read_text())
    chat_ids = backend.encode_prompt(backend.apply_chat_template([{"role": "user", "content": "Hello there"}]))
    assert row["prompt"] == "Hello there" and row["prompt_token_ids"] == chat_ids


def test_generate_file_errors_name_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:2:.*'prompt'"):
        read_prompts(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"broken\.jsonl:3: not valid JSON"):
        read_prompts(broken)
    with pytest.raises(UserError, match="not found"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="max_new_tokens"):
        generate_file("tiny", bad, None, max_new_tokens=0, temperature=0.0, chat=False, options=CPU)


def test_chat_loop_keeps_the_conversation_and_clears(backend, monkeypatch):
    monkeypatch.setattr(EngineBackend, "from_spec", classmethod(lambda cls, arg, options: backend))
    monkeypatch.setattr(EngineBackend, "close", lambda self: None)
    prompts: list[str] = []
    render = backend.apply_chat_template

    def spy(messages):
        prompts.append(json.dumps(messages))
        return render(messages)

    monkeypatch.setattr(backend, "apply_chat_template", spy)
    out = io.StringIO()
    chat_loop("tiny", CPU, max_new_tokens=4, temperature=0.0,
              stdin=io.StringIO("Hello\nHow are you?\n/clear\nAgain\n/exit\nnever read\n"), stdout=out)
    turns = [json.loads(p) for p in prompts]
    assert [len(t) for t in turns] == [1, 3, 1]  # second turn sees the first exchange; /clear resets
    assert turns[1][0]["content"] == "Hello" and turns[1][1]["role"] == "assistant"
    assert turns[2] == [{"role": "user", "content": "Again"}]
    assert "(conversation cleared)" in out.getvalue()


def test_speculative_backend_generates_the_greedy_text(backend):
    spec = EngineBackend(LLM.from_model(backend.llm.model, backend.llm.config, backend.tokenizer,
                                        EngineConfig(speculative="mtp")), "tiny")
    reqs = [GenerateRequest("Tell me a story", max_tokens=10), GenerateRequest("1 2 3", max_tokens=7, stop=("zz",))]
    assert [r.text for r in spec.generate(reqs)] == [r.text for r in backend.generate(reqs)]
    stats = spec.stats()  # what run.json records per invocation
    assert stats["draft_proposed"] > 0 and stats["acceptance_rate"] == stats["draft_accepted"] / stats["draft_proposed"]
    assert stats["generated_tokens"] >= 10 and backend.stats()["draft_proposed"] == 0
