"""Serving runtime of the engine: paged blocks, scheduler, sampler, engine loop, scoring, MTP.

The model is the ``tiny`` preset (the real V3 layout with random weights) loaded through the
real loader in float32. References are computed with no cache reuse at all: every step runs
the whole sequence through the model from an empty cache.
"""

from __future__ import annotations

import random

import pytest
import torch
from dseval.engine.model.attention_metadata import AttentionMetadata
from dseval.engine.runtime.block_manager import BlockManager, chain_hash
from dseval.engine.api import LLM, ConfigError, EngineConfig, ScoreRequest
from dseval.engine.loading.loader import load_model
from dseval.engine.runtime.sampler import (
    Sampler,
    apply_top_k_top_p,
    argmax_rows,
    token_logprobs,
)
from dseval.engine.runtime.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from dseval.engine.runtime.sequence import SamplingParams, Sequence
from dseval.engine.runtime.speculative import MtpSpeculator
from dseval.engine.runtime.stopping import StopRules


GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


# ---------------------------------------------------------------------------- fixtures / refs
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The toy model's ops are microseconds long; on a shared 2-core box, intra-op threads
    only add spin-waiting. Restored afterwards so other test modules are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    model, config, tokenizer = load_model("tiny", device="cpu", dtype=torch.float32)
    return model, config, tokenizer


def make_llm(tiny, **kw) -> LLM:
    model, config, tokenizer = tiny
    kw.setdefault("block_size", 4)
    kw.setdefault("num_kv_blocks", 1024)
    return LLM.from_model(model, config, tokenizer, EngineConfig(**kw))


def prompts(n: int, seed: int = 0, lo: int = 1, hi: int = 48) -> list[list[int]]:
    rng = random.Random(seed)
    return [[0] + [rng.randrange(2, 120_000) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def full_forward(model, config, ids: list[int]) -> tuple[torch.Tensor, AttentionMetadata]:
    """Hidden states of the whole sequence from an empty, private cache (no reuse)."""
    T, bs = len(ids), 16
    nb = -(-T // bs)
    caches = [torch.zeros(nb, bs, model.kv_cache_row_width(config)) for _ in range(model.num_attention_layers)]
    meta = AttentionMetadata(torch.tensor([0, T]), torch.tensor([T]), torch.arange(nb)[None], torch.arange(T),
                             caches, absorbed=False)
    return model(torch.tensor(ids), torch.arange(T), meta), meta


def reference_greedy(model, config, ids: list[int], n: int) -> list[int]:
    ids, out = list(ids), []
    for _ in range(n):
        h, _ = full_forward(model, config, ids)
        t = int(model.compute_logits(h[-1:]).argmax(-1))
        ids.append(t)
        out.append(t)
    return out


def reference_mtp_draft(model, config, ids: list[int]) -> int:
    """The MTP module's draft for the token after ``ids``: MTP row at position len-2 with the
    main hidden state there and the last token as its 'next' token."""
    h, meta = full_forward(model, config, ids)
    T = len(ids) - 1
    meta.cu_seqlens_q = torch.tensor([0, T])
    meta.context_lens = torch.tensor([T])
    meta.slot_mapping = torch.arange(T)
    hm = model.mtp_forward(torch.tensor(ids[1:]), torch.arange(T), h[:T], meta)
    return int(model.mtp_logits(hm[-1:]).argmax(-1))


# ---------------------------------------------------------------------------- block manager
def test_block_manager_allocation_refcounts_and_prefix_hits():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = Sequence(list(range(10)), GREEDY)  # 2 full blocks + 2 tokens
    assert bm.lookup_prefix(a).block_ids == []
    bm.admit(a, bm.lookup_prefix(a))
    bm.ensure_slots(a, 10)
    assert len(a.block_table) == 3 and bm.num_free_blocks == 5
    # Nothing is shareable before the KV is computed; a twin must wait for it instead.
    b = Sequence(list(range(10)) + [99], GREEDY)
    look = bm.lookup_prefix(b)
    assert look.block_ids == [] and look.pending
    a.num_computed_tokens = 10
    bm.commit(a)
    look = bm.lookup_prefix(b)
    assert look.block_ids == a.block_table[:2] and not look.pending
    bm.admit(b, look)
    assert b.num_computed_tokens == 8
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    bm.ensure_slots(b, 11)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    # Same second block content behind a different first block: the chain hash differs.
    c = Sequence([7, 7, 7, 7] + list(range(4, 8)) + [1, 2], GREEDY)
    assert bm.lookup_prefix(c).block_ids == []
    # Freeing keeps the cached blocks findable until they are reused.
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 8 and all(blk.ref_count == 0 for blk in bm.blocks)
    d = Sequence(list(range(9)), GREEDY)
    assert len(bm.lookup_prefix(d).block_ids) == 2
    # At least one token is always recomputed: an exactly block-aligned prompt hits one block less.
    e = Sequence(list(range(8)), GREEDY)
    assert len(bm.lookup_prefix(e).block_ids) == 1
    # Positions that need prompt logprobs are never served from the cache.
    f = Sequence(list(range(10)), SamplingParams(max_tokens=0), logprob_start=5)
    assert len(bm.lookup_prefix(f).block_ids) == 1


def test_block_hashes_copied_between_sequences_equal_the_chain_computed_afresh():
    """Prompt block hashes are computed once per sequence and copied from the sequence hashed
    before where both agree: they must equal the chain computed from scratch, including where
    only a later block or only an earlier one differs."""
    rng = random.Random(0)
    header = [rng.randrange(50) for _ in range(12)]
    prompts = [header + [rng.randrange(50) for _ in range(rng.randrange(0, 14))] for _ in range(30)]
    prompts += [[5] + header[1:] + [1] * 6, header[:4] + [0] * 4 + header[8:]]  # first / middle block differs
    bm = BlockManager(num_blocks=4, block_size=4)
    for ids in prompts + prompts[::-1]:
        seq = Sequence(ids, GREEDY)
        n = len(ids) // 4
        got = [bm.block_hash(seq, i, None) for i in reversed(range(n))][::-1]  # latest block first
        want, parent = [], None
        for i in range(n):
            parent = chain_hash(parent, ids[i * 4:(i + 1) * 4])
            want.append(parent)
        assert got == want, ids


def test_block_manager_evicts_least_recently_freed_and_refuses_when_full():
    bm = BlockManager(num_blocks=4, block_size=2)
    old = Sequence([1, 2, 3, 4, 5], GREEDY)
    bm.admit(old, bm.lookup_prefix(old))
    bm.ensure_slots(old, 5)
    old.num_computed_tokens = 5
    bm.commit(old)
    bm.free(old)
    big = Sequence(list(range(100, 107)), GREEDY)
    assert bm.can_allocate(big, 7) and not bm.can_allocate(big, 9)
    bm.admit(big, bm.lookup_prefix(big))
    bm.ensure_slots(big, 7)
    assert bm.stats.evicted_blocks == 2  # old's two hashed blocks were reused
    assert bm.lookup_prefix(Sequence([1, 2, 3, 4, 5], GREEDY)).block_ids == []
    with pytest.raises(RuntimeError, match="exhausted"):
        bm.ensure_slots(big, 9)


# ---------------------------------------------------------------------------- scheduler
def test_scheduler_defers_a_shared_prefix_until_it_is_computed_and_preempts_newest():
    bm = BlockManager(num_blocks=12, block_size=4)
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, chunked_prefill=True), bm)
    shared = list(range(100, 112))  # three full blocks of shared context
    a, b = Sequence(shared + [1, 2], GREEDY), Sequence(shared + [3], GREEDY)
    sched.add(a)
    sched.add(b)
    first = sched.schedule()
    assert first.is_prefill and first.seqs == [a] and list(sched.waiting) == [b]  # b waits for a's blocks
    a.num_computed_tokens = len(a)
    a.token_ids.append(5)
    bm.commit(a)
    second = sched.schedule()
    assert second.seqs == [b] and second.num_new_tokens == [1]  # only its own token is computed
    assert b.block_table[:3] == a.block_table[:3] and b.num_prefix_hit_tokens == 12
    b.num_computed_tokens = len(b)
    b.token_ids.append(6)
    bm.commit(b)
    # 12 blocks: a holds 4, b 1 more, c the other 7; c (the newest) then needs an 8th to
    # decode, so c itself is preempted rather than the older a or b.
    c = Sequence(list(range(200, 228)), GREEDY)
    sched.add(c)
    assert sched.schedule().seqs == [c]
    c.num_computed_tokens = len(c)
    c.token_ids.append(7)
    bm.commit(c)
    assert bm.num_free_blocks == 0
    decode = sched.schedule()
    assert not decode.is_prefill and sched.num_preemptions == 1
    assert c not in decode.seqs and list(sched.waiting) == [c] and c.num_computed_tokens == 0
    assert decode.seqs == [a, b]


# ---------------------------------------------------------------------------- sampler
def test_sampler_is_batch_invariant_and_seeded():
    torch.manual_seed(0)
    logits = torch.randn(6, 500)
    params = [SamplingParams(temperature=t, top_p=p, top_k=k, seed=s)
              for t, p, k, s in [(0.0, 1.0, 0, 0), (1.0, 1.0, 0, 1), (0.7, 0.9, 0, 2), (1.3, 1.0, 20, 3),
                                 (1.0, 0.5, 5, 4), (1.0, 1.0, 0, 1)]]
    sampler = Sampler()
    batch = sampler(logits, params, [3] * 6).tolist()
    alone = [int(sampler(logits[i:i + 1], [params[i]], [3])) for i in range(6)]
    assert batch == alone
    assert batch[0] == int(logits[0].argmax())
    # Another token index or another seed draws differently (over many rows, surely somewhere).
    many = logits[1:2].expand(64, -1)
    a = sampler(many, [params[1]] * 64, list(range(64)))
    assert len(set(a.tolist())) > 5
    b = sampler(many, [SamplingParams(temperature=1.0, seed=99)] * 64, list(range(64)))
    assert not torch.equal(a, b)
    # top_k=1 and a vanishing top_p are greedy.
    one = sampler(logits, [SamplingParams(temperature=1.0, top_k=1, seed=5)] * 6, [0] * 6)
    assert torch.equal(one, logits.argmax(-1))
    nucleus = sampler(logits, [SamplingParams(temperature=1.0, top_p=1e-6, seed=5)] * 6, [0] * 6)
    assert torch.equal(nucleus, logits.argmax(-1))


def test_two_pass_argmax_equals_argmax_ties_included():
    x = torch.randn(5, 129_280, generator=torch.Generator().manual_seed(0))  # DeepSeek-V3's vocabulary
    x[1, 7] = x[1, 90_000] = 100.0  # tied across pieces
    x[2, 2_021] = x[2, 2_022] = 50.0  # tied within a piece
    x[3] = 0.0  # all tied
    got = argmax_rows(x)
    assert torch.equal(got, x.argmax(dim=-1)) and got[1:4].tolist() == [7, 2_021, 0]
    odd = torch.randn(3, 1_001, generator=torch.Generator().manual_seed(1))  # no divisor: plain argmax
    assert torch.equal(argmax_rows(odd), odd.argmax(dim=-1))


def test_sampler_follows_the_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]])
    n = 4000
    draws = Sampler()(logits.expand(n, -1), [SamplingParams(temperature=1.0, seed=7)] * n, list(range(n)))
    freq = torch.bincount(draws, minlength=5).float() / n
    expect = logits[0].softmax(-1)
    assert torch.allclose(freq, expect, atol=0.03), (freq, expect)
    filtered = apply_top_k_top_p(logits, torch.tensor([0]), torch.tensor([0.8]))
    assert torch.isfinite(filtered[0, :2]).all() and torch.isinf(filtered[0, 2:]).all()
    # The top-k shortcut (no full sort) keeps exactly the tokens the full sort keeps.
    wide = torch.randn(3, 3000) * 4
    k, p = torch.tensor([0, 7, 300]), torch.tensor([0.5, 0.9, 0.8])
    full = apply_top_k_top_p(wide, k, p)
    short = apply_top_k_top_p(wide, k, p, candidates=300)
    assert torch.equal(torch.isinf(full), torch.isinf(short))
    assert 1 <= int(torch.isfinite(full[1]).sum()) <= 7
    lp, greedy, _, _ = token_logprobs(logits, torch.tensor([1]))
    assert abs(float(lp) - float(logits.log_softmax(-1)[0, 1])) < 1e-6 and not bool(greedy)


def test_sampling_params_errors_name_the_field():
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        EngineConfig(max_num_batched_tokens=0)
    with pytest.raises(ValueError, match="speculative"):
        EngineConfig(speculative="eagle")


# ---------------------------------------------------------------------------- engine
def test_paged_greedy_equals_full_recompute_and_batch_equals_alone(tiny):
    model, config, _ = tiny
    llm = make_llm(tiny)
    ps = prompts(16, seed=1)
    batch = llm.generate(ps, GREEDY)
    assert llm.stats.decode_steps >= 11
    for i in (0, 5, 11):
        assert batch[i].token_ids == reference_greedy(model, config, ps[i], 12), i
    solo = make_llm(tiny, enable_prefix_cache=False)  # nothing carries over between calls
    for i, p in enumerate(ps):
        alone = solo.generate([p], GREEDY)[0]
        assert alone.token_ids == batch[i].token_ids, i
        assert batch[i].prompt_token_ids == p and batch[i].finish_reason == "length"


def test_chunked_prefill_respects_budget_and_preemption_resumes_identically(tiny):
    ps = prompts(12, seed=2, lo=10, hi=40)
    sampled = [SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=i, ignore_eos=True) for i in range(12)]
    params = [GREEDY if i % 2 else sampled[i] for i in range(12)]
    want = make_llm(tiny).generate(ps, params)

    llm = make_llm(tiny, max_num_batched_tokens=16, num_kv_blocks=40)
    steps: list[ScheduledBatch] = []
    schedule = llm.scheduler.schedule

    def spy() -> ScheduledBatch:
        b = schedule()
        steps.append(ScheduledBatch(b.is_prefill, list(b.seqs), list(b.num_new_tokens)))
        return b

    llm.scheduler.schedule = spy  # type: ignore[method-assign]
    got = llm.generate(ps, params)
    assert all(s.num_tokens <= 16 for s in steps if s.is_prefill)
    assert any(len(s.seqs) == 1 and s.num_new_tokens[0] < len(s.seqs[0]) - 1 for s in steps if s.is_prefill)
    assert llm.stats.preemptions > 0, "the cache was meant to be too small for all requests at once"
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert llm.block_manager.num_free_blocks == 40  # everything released
    # Without chunking, prompts longer than the budget still run (alone), with the same result.
    whole = make_llm(tiny, max_num_batched_tokens=16, chunked_prefill=False, num_kv_blocks=40)
    assert [g.token_ids for g in whole.generate(ps, params)] == [w.token_ids for w in want]


def test_sampled_generation_is_seeded_and_batch_invariant(tiny):
    ps = prompts(6, seed=3)
    params = [SamplingParams(max_tokens=8, temperature=1.0, top_k=50, seed=11 + i, ignore_eos=True) for i in range(6)]
    batch = make_llm(tiny).generate(ps, params)
    solo = make_llm(tiny, enable_prefix_cache=False)
    alone = [solo.generate([p], q)[0].token_ids for p, q in zip(ps, params)]
    assert [b.token_ids for b in batch] == alone
    other_seed = make_llm(tiny).generate([ps[0]], SamplingParams(max_tokens=8, temperature=1.0, top_k=50, seed=999,
                                                                 ignore_eos=True))[0]
    greedy = make_llm(tiny).generate([ps[0]], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    assert other_seed.token_ids != batch[0].token_ids or greedy.token_ids != batch[0].token_ids


def test_stop_strings_token_limits_and_eos(tiny):
    _, _, tok = tiny
    llm = make_llm(tiny)
    prompt = tok.encode("The quick brown fox", add_bos=True)
    full = llm.generate([prompt], SamplingParams(max_tokens=24, ignore_eos=True))[0]
    assert len(full.token_ids) == 24 and full.finish_reason == "length"
    assert full.text == tok.decode(full.token_ids)
    # A stop string taken from the middle of the output cuts the text before it.
    text = full.text
    start = len(tok.decode(full.token_ids[:6]))
    stop = text[start:start + 3]
    assert stop and text.find(stop) >= 0
    cut = llm.generate([prompt], SamplingParams(max_tokens=24, ignore_eos=True, stop=("\x00never", stop)))[0]
    assert cut.finish_reason == "stop" and cut.text == text[: text.find(stop)]
    assert stop not in cut.text and len(cut.token_ids) < 24
    # Token limit.
    five = llm.generate([prompt], SamplingParams(max_tokens=5, ignore_eos=True))[0]
    assert five.token_ids == full.token_ids[:5] and five.finish_reason == "length"
    # An end token (here: declared through stop_token_ids) ends the request and is not in the text.
    eos_like = full.token_ids[3]
    first = full.token_ids.index(eos_like)
    ended = llm.generate([prompt], SamplingParams(max_tokens=24, stop_token_ids=(eos_like,)))[0]
    assert ended.token_ids == full.token_ids[: first + 1] and ended.finish_reason == "stop"
    assert ended.text == tok.decode(full.token_ids[:first])


def test_stop_strings_found_however_tokens_split_characters(tiny):
    """Stop strings are searched in a window of the last tokens only: every stop string,
    multi-byte characters and strings spanning several tokens included, ends the output
    where the first occurrence in the whole decoded text does."""
    _, config, tok = tiny
    text = "价格是 100 元。Problem: ∑ x² ≤ 🙂𠀋𠀌 ꙮ𝔘𝔫 naïve\n\nProblem:"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    rules = StopRules.for_model(config, tok, 10_000)
    prompt = tok.encode("Q", add_bos=True)
    stops = {text[a:b] for a in range(len(text)) for b in range(a + 1, min(len(text), a + 6) + 1)}
    for stop in sorted(stops):
        seq = Sequence(prompt, SamplingParams(max_tokens=len(ids), ignore_eos=True, stop=(stop,)))
        for t in ids:
            if rules.append(seq, t):
                break
        assert seq.finish_reason == "stop" and seq.output_text == text[: text.find(stop)], stop


def test_stop_strings_decode_only_where_a_token_can_complete_one(tiny, monkeypatch):
    """The output's tail is decoded only after a token whose text could end a stop string (it
    holds the string's last character, or its text is not fixed): a long answer without a
    colon costs no decode for "Problem:"."""
    _, config, tok = tiny
    rules = StopRules.for_model(config, tok, 10_000)
    ids = tok.encode("Let x be 5. Then x² = 25, so the answer is 25 🙂 and 𠀋. " * 20 + "Problem: next")
    may_end = {t for t in ids if tok.piece(t) is None or ":" in tok.piece(t)}  # pieces cached before counting
    decoded: list[int] = []
    decode = tok.decode
    monkeypatch.setattr(tok, "decode", lambda part, **kw: decoded.append(len(part)) or decode(part, **kw))
    seq = Sequence(tok.encode("Q", add_bos=True), SamplingParams(max_tokens=len(ids), ignore_eos=True, stop=("Problem:",)))
    for t in ids:
        if rules.append(seq, t):
            break
    text = decode(ids)
    assert seq.finish_reason == "stop" and seq.output_text == text[: text.find("Problem:")]
    may = [t for t in seq.output_token_ids if t in may_end]
    assert len(decoded) == len(may) + 1, "one tail per token that may complete it, then the whole output once"
    assert 0 < len(may) < len(seq.output_token_ids) // 4


def test_overlap_scheduling_changes_no_output(tiny):
    """Launching decode step N+1 before step N's tokens reach the host (overlap scheduling)
    gives the same outputs as the plain loop, with requests ending at different steps (stop
    tokens, token limits), sampled ones, a waiting queue and preemptions."""
    ps = prompts(10, seed=9, lo=5, hi=30)
    plain = make_llm(tiny, overlap_schedule=False).generate(ps, SamplingParams(max_tokens=16, ignore_eos=True))
    params = []
    for i, o in enumerate(plain):
        if i % 3 == 0:  # ends on a token it generates (as on EOS), while the next step is in flight
            params.append(SamplingParams(max_tokens=16, stop_token_ids=(o.token_ids[2 + i % 7],)))
        elif i % 3 == 1:
            params.append(SamplingParams(max_tokens=3 + i, ignore_eos=True))
        else:
            params.append(SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=i, ignore_eos=True))
    kw = {"max_num_seqs": 4, "num_kv_blocks": 20}
    off, on = make_llm(tiny, overlap_schedule=False, **kw), make_llm(tiny, **kw)
    want, got = off.generate(ps, params), on.generate(ps, params)
    assert [(o.token_ids, o.finish_reason) for o in got] == [(o.token_ids, o.finish_reason) for o in want]
    assert any(o.finish_reason == "stop" for o in got) and any(o.finish_reason == "length" for o in got)
    assert on.stats.overlapped_steps > 0 and off.stats.overlapped_steps == 0
    assert on.stats.preemptions > 0, "the cache was meant to be too small for all requests at once"
    assert on.block_manager.num_free_blocks == 20  # everything released, placeholders included
    assert on.stats.generated_tokens == off.stats.generated_tokens


def test_loglikelihood_matches_full_log_softmax_and_shares_the_context(tiny):
    model, config, _ = tiny
    rng = random.Random(4)
    context = [0] + [rng.randrange(2, 120_000) for _ in range(37)]
    choices = [[rng.randrange(2, 120_000) for _ in range(k)] for k in (1, 2, 3, 1)]
    reqs = [ScoreRequest(tuple(context + c), len(context)) for c in choices]
    llm = make_llm(tiny, block_size=4)
    llm.runner.logprob_rows_per_pass = 2  # the 3-token choice is scored across two slices
    finished: list[int] = []
    outs = llm.score(reqs, on_finish=lambda i, o: finished.append(i))
    assert sorted(finished) == [0, 1, 2, 3]
    for req, out in zip(reqs, outs):
        ids = list(req.token_ids)
        h, _ = full_forward(model, config, ids)
        logp = model.compute_logits(h).log_softmax(-1)
        want = [float(logp[p - 1, ids[p]]) for p in range(req.continuation_start, len(ids))]
        assert out.token_logprobs == pytest.approx(want, abs=1e-4)
        assert out.logprob == pytest.approx(sum(want), abs=1e-4)
        greedy = all(int(logp[p - 1].argmax()) == ids[p] for p in range(req.continuation_start, len(ids)))
        assert out.is_greedy == greedy
        tops = [int(logp[p - 1].argmax()) for p in range(req.continuation_start, len(ids))]
        assert [t.top_id for t in out.tokens] == tops
        assert [t.top_logprob for t in out.tokens] == pytest.approx([float(logp[p - 1].max()) for p in
                                                                      range(req.continuation_start, len(ids))], abs=1e-4)
    # The context (38 tokens; cacheable: the 9 full blocks inside its first 37) is prefilled once.
    hit = 9 * 4
    total = sum(len(r.token_ids) for r in reqs)
    assert llm.stats.prefix_hit_tokens == 3 * hit
    assert llm.stats.prefill_tokens == total - 3 * hit
    # A continuation that is the greedy choice is reported greedy.
    t = reference_greedy(model, config, context, 2)
    g = llm.score([ScoreRequest(tuple(context + t), len(context))])[0]
    assert g.is_greedy


def test_mtp_speculative_greedy_equals_plain_greedy(tiny, capsys):
    model, config, _ = tiny
    ps = prompts(8, seed=5)
    plain = make_llm(tiny).generate(ps, GREEDY)
    spec = make_llm(tiny, speculative="mtp")
    drafts: list[tuple[tuple[int, ...], int]] = []
    propose = spec.speculator.propose

    def record(batch, out, new_tokens):
        propose(batch, out, new_tokens)
        for seq, new in zip(batch.seqs, new_tokens):
            if seq.draft_token is not None:
                drafts.append((tuple(seq.token_ids + new), seq.draft_token))

    spec.speculator.propose = record  # type: ignore[method-assign]
    got = spec.generate(ps, GREEDY)
    assert [g.token_ids for g in got] == [p.token_ids for p in plain]
    rate = spec.stats.acceptance_rate
    with capsys.disabled():
        print(f"\n[mtp] tiny preset (random MTP weights): {spec.stats.draft_accepted}/{spec.stats.draft_proposed} "
              f"drafts accepted, acceptance rate {rate:.3f}")
    assert spec.stats.draft_proposed > 0
    # The paged MTP pass drafts exactly what the MTP module computes on the full sequence.
    for ids, d in drafts[:: max(1, len(drafts) // 6)]:
        assert reference_mtp_draft(model, config, list(ids)) == d


def test_speculative_accept_path_with_oracle_drafts(tiny, capsys):
    """Random MTP weights are almost never right, so drafts are replaced by the true next
    token (half of the time) to drive the accept path: outputs must still equal greedy."""
    ps = prompts(6, seed=6)
    plain_llm = make_llm(tiny)
    plain = plain_llm.generate(ps, GREEDY)
    truth = {tuple(p): p + o.token_ids for p, o in zip(ps, plain)}
    spec = make_llm(tiny, speculative="mtp")
    propose = spec.speculator.propose
    flip = random.Random(0)

    def oracle(batch, out, new_tokens):
        propose(batch, out, new_tokens)
        for seq, new in zip(batch.seqs, new_tokens):
            if seq.draft_token is not None and flip.random() < 0.5:
                full = truth[tuple(seq.token_ids[: seq.num_prompt_tokens])]
                k = len(seq.token_ids) + len(new)
                if k < len(full):
                    seq.draft_token = full[k]

    spec.speculator.propose = oracle  # type: ignore[method-assign]
    got = spec.generate(ps, GREEDY)
    assert [g.token_ids for g in got] == [p.token_ids for p in plain]
    assert spec.stats.draft_accepted > 0
    assert spec.stats.decode_steps < plain_llm.stats.decode_steps  # accepted drafts save steps
    with capsys.disabled():
        print(f"\n[mtp] oracle drafts: acceptance {spec.stats.acceptance_rate:.3f}, "
              f"{spec.stats.decode_steps} decode steps for {len(ps)}x12 tokens")


def test_speculative_needs_an_mtp_layer():
    class NoMtp:
        config = type("C", (), {"num_nextn_predict_layers": 0})()

    with pytest.raises(ValueError, match="num_nextn_predict_layers"):
        MtpSpeculator(NoMtp())  # type: ignore[arg-type]


def test_nonfinite_logits_end_the_request(tiny, monkeypatch: pytest.MonkeyPatch):
    """A row of NaN logits mid-generation ends that request with finish reason "nonfinite" (the
    runner turns it into an error naming the doc); the other request of the batch is untouched,
    greedy or sampled."""
    model, _, tok = tiny
    prompts_ = [tok.encode("The quick brown fox", add_bos=True), tok.encode("Once upon a time", add_bos=True)]
    for params in (SamplingParams(max_tokens=8, ignore_eos=True),
                   SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.8, seed=3)):
        alone = make_llm(tiny).generate([prompts_[1]], params)[0]
        original, calls = model.compute_logits, [0]

        def poisoned(hidden):
            logits = original(hidden)
            calls[0] += 1
            if calls[0] == 3:
                logits = logits.clone()
                logits[0] = float("nan")
            return logits

        monkeypatch.setattr(model, "compute_logits", poisoned)
        outs = make_llm(tiny).generate(prompts_, params)
        monkeypatch.setattr(model, "compute_logits", original)
        reasons = [o.finish_reason for o in outs]
        assert sorted(reasons) == ["length", "nonfinite"], reasons
        bad, good = (outs[0], outs[1]) if reasons[0] == "nonfinite" else (outs[1], outs[0])
        assert len(bad.token_ids) < 8 and bad.text == tok.decode(bad.token_ids)
        if good is outs[1]:
            assert good.token_ids == alone.token_ids


def test_context_sized_tables_stop_at_the_kv_cache(tiny):
    """Block tables (and, with CUDA graphs, the rotary tables) are sized to what the KV cache can
    hold, not to max_position_embeddings: a config claiming millions of positions costs nothing
    beyond the cache it actually gets."""
    _, config, tok = tiny
    assert config.max_position_embeddings >= 1 << 17
    llm = make_llm(tiny, num_kv_blocks=32, block_size=4)
    assert llm.runner.max_blocks_per_seq == -(-(32 * 4 + 2) // 4)
    out = llm.generate([tok.encode("The quick brown fox", add_bos=True)], SamplingParams(max_tokens=6, ignore_eos=True))
    assert len(out[0].token_ids) == 6


def test_scores_and_greedy_outputs_do_not_depend_on_speed_settings(tiny):
    """Batch size (1, 32, 256: one at a time, packed varlen prefill, everything at once), the
    prefill chunk and the packed groups' size change only how work is grouped: loglikelihoods
    agree to float tolerance and greedy outputs are equal. Requests share contexts as a
    loglikelihood task's choices do."""
    rng = random.Random(7)
    contexts = [[0] + [rng.randrange(2, 120_000) for _ in range(rng.randrange(5, 40))] for _ in range(12)]
    reqs = [ScoreRequest(tuple(c + [rng.randrange(2, 120_000) for _ in range(k)]), len(c))
            for c in contexts for k in (1, 2, 3)]
    ps = prompts(10, seed=8)
    want_scores = want_greedy = None
    for seqs, chunk, group_rows in ((1, 2048, 1 << 15), (32, 2048, 1 << 15), (256, 2048, 1 << 15), (32, 7, 1 << 15),
                                    (256, 64, 1 << 15), (256, 2048, 60)):
        llm = make_llm(tiny, max_num_seqs=seqs, max_num_batched_tokens=chunk)
        llm.runner.packed_context_rows = group_rows
        scores = [o.token_logprobs for o in llm.score(reqs)]
        greedy = [o.token_ids for o in llm.generate(ps, SamplingParams(max_tokens=6, ignore_eos=True))]
        if want_scores is None:
            want_scores, want_greedy = scores, greedy
            continue
        for got, want in zip(scores, want_scores, strict=True):
            assert got == pytest.approx(want, abs=1e-4), (seqs, chunk, group_rows)
        assert greedy == want_greedy, (seqs, chunk, group_rows)


def test_max_num_seqs_is_chosen_from_the_kv_cache_when_unset():
    """Unset, the GPU's concurrency follows the cache (one sequence per ``TOKENS_PER_SEQ`` tokens,
    capped); on CPUs it is fixed; a given value is kept and a bad one refused."""
    from dseval.engine.runtime.engine_config import (CPU_MAX_NUM_SEQS, GPU_MAX_NUM_SEQS, TOKENS_PER_SEQ,
                                                      auto_max_num_seqs)

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert auto_max_num_seqs(gpu, 10 * TOKENS_PER_SEQ + 5) == 10
    assert auto_max_num_seqs(gpu, 1) == 1
    assert auto_max_num_seqs(gpu, 10**9) == GPU_MAX_NUM_SEQS
    assert auto_max_num_seqs(cpu, 1) == CPU_MAX_NUM_SEQS
    assert EngineConfig().max_num_seqs is None
    with pytest.raises(ConfigError, match="'max_num_seqs' must be >= 1"):
        EngineConfig(max_num_seqs=0)
