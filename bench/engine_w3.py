"""W3 engine benchmark: dseval's engine vs Hugging Face transformers vs the weight-read floor.

One device call: builds the W3 model (DeepSeek-V3 dimensions, ``--layers`` decoder layers, the
first dense, random FP8 weights with block scales drawn on the GPU), then

1. ``check``: correctness of the fast paths on the real model: last-token logits of a decode
   step replayed from a CUDA graph (absorbed MLA through ``kernels.mla_decode``, fused MoE, a
   padded batch bucket) against a full expanded prefill of the same tokens (flash attention);
   fused MoE against the per-expert reference loop on one layer.
2. ``decode``: dseval decode at every (batch, prompt) cell. The prompt's cache is filled with
   random latents instead of being prefilled (decode speed does not depend on cache values;
   this keeps 128 x 32K prompts inside the device budget), then ``--new-tokens`` engine steps
   (``LLM.step``: schedule, inputs, graph replay, logits, sampling) are timed, and the graph
   replay alone is timed with CUDA events.
3. ``e2e``: real ``LLM.generate`` (chunked prefill + decode) at the shortest prompt.
4. ``prefill``: one ``--prefill-len`` prompt (128K) through chunked prefill, batch 1.
5. ``hf``: transformers' DeepseekV3ForCausalLM with the same config in bf16 (random init on the
   GPU), ``generate`` at the cells it can do within ``--hf-budget-s``.

The floor of a decode step is the bytes it must read over ``--bandwidth`` (4.24 TB/s measured
copy rate of the H200): FP8 linears with their scales, the bf16 head, a bf16 router, the
expected number of distinct routed experts hit by B tokens (uniform routing:
256·(1-(1-8/256)^B)), the shared expert, and the latent cache rows of every sequence.

    python bench/engine_w3.py [--layers 3] [--batches 1 8 32 128] [--prompts 256 4096 32768]
        [--new-tokens 32] [--prefill-len 131072] [--no-hf] [--out results/bench/engine_w3.json]

Prints one table and writes JSON to ``--out`` and ``$OUT`` (if set) after every phase.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
W3_CONFIG = ROOT / "configs" / "models" / "w3.json"


# ---------------------------------------------------------------------------------------- setup
def w3_config(layers: int, tiny: bool) -> Any:
    from dseval.engine.config import ModelConfig

    cfg = ModelConfig.from_json_file(W3_CONFIG)
    cfg = dataclasses.replace(cfg, num_hidden_layers=layers)
    if tiny:  # CPU smoke run of this script's logic, not a measurement
        cfg = dataclasses.replace(cfg, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                                  num_attention_heads=4, q_lora_rank=128, vocab_size=2048, n_routed_experts=16,
                                  n_group=4, topk_group=2, num_experts_per_tok=4)
    return cfg


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Report:
    """Collects results; rewrites the JSON files after every phase so a timeout loses little."""

    def __init__(self, paths: list[Path], meta: dict[str, Any]) -> None:
        self.paths = paths
        self.data: dict[str, Any] = {"meta": meta, "floor": {}, "check": {}, "dseval": [], "e2e": [],
                                     "prefill": {}, "hf": [], "errors": [], "skipped": []}

    def save(self) -> None:
        for p in self.paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(self.data, indent=1, default=str))

    def error(self, phase: str, exc: BaseException) -> None:
        tb = traceback.format_exc()
        print(f"[{phase}] FAILED: {exc!r}\n{tb}", flush=True)
        self.data["errors"].append({"phase": phase, "error": repr(exc), "traceback": tb[-4000:]})
        self.save()


# ---------------------------------------------------------------------------------------- floor
def expected_distinct_experts(n_experts: int, top_k: int, tokens: int) -> float:
    return n_experts * (1 - (1 - top_k / n_experts) ** tokens)


def step_floor_bytes(cfg: Any, batch: int, context: int) -> dict[str, float]:
    """Bytes one decode step of ``batch`` sequences at ``context`` cached tokens must read."""
    h, blk = cfg.hidden_size, 128

    def fp8(n: int, k: int) -> float:
        return n * k + 4 * math.ceil(n / blk) * math.ceil(k / blk)

    heads, qk = cfg.num_attention_heads, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    attn = (fp8(cfg.q_lora_rank, h) + fp8(heads * qk, cfg.q_lora_rank)
            + fp8(cfg.kv_lora_rank + cfg.qk_rope_head_dim, h)
            + fp8(heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank) + fp8(h, heads * cfg.v_head_dim))
    dense = 2 * fp8(cfg.intermediate_size, h) + fp8(h, cfg.intermediate_size)
    expert = 2 * fp8(cfg.moe_intermediate_size, h) + fp8(h, cfg.moe_intermediate_size)
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    n_dense = cfg.num_hidden_layers - n_moe
    distinct = expected_distinct_experts(cfg.n_routed_experts, cfg.num_experts_per_tok, batch)
    moe = (distinct + cfg.n_shared_experts) * expert + 2 * cfg.n_routed_experts * h  # + bf16 router
    kv = batch * context * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 2 * cfg.num_hidden_layers
    head = 2 * cfg.vocab_size * h
    weights = cfg.num_hidden_layers * attn + n_dense * dense + n_moe * moe + head + batch * h * 2
    return {"weights": weights, "kv": kv, "total": weights + kv, "distinct_experts": distinct}


# ---------------------------------------------------------------------------------------- dseval
def build_llm(cfg: Any, args: argparse.Namespace, device: torch.device) -> Any:
    from dseval.engine.llm import LLM, EngineConfig
    from dseval.engine.random_init import random_fp8_model

    t0 = time.perf_counter()
    model = random_fp8_model(cfg, device, torch.bfloat16, seed=0)
    sync()
    built = time.perf_counter() - t0
    max_prompt = max(max(args.prompts), args.prefill_len)
    ec = EngineConfig(block_size=args.block_size, num_kv_blocks=args.kv_blocks, max_num_seqs=max(args.batches),
                      max_num_batched_tokens=args.chunk, enable_prefix_cache=False,
                      max_model_len=max_prompt + args.new_tokens + 64, cuda_graphs=not args.no_graphs)
    t0 = time.perf_counter()
    llm = LLM.from_model(model, cfg, None, ec)
    for cache in llm.runner.kv_caches:  # decode cells attend over these instead of prefilled rows
        cache.normal_(generator=torch.Generator(device=cache.device).manual_seed(1))
    sync()
    print(f"built W3 ({cfg.num_hidden_layers} layers) in {built:.1f}s, engine setup {time.perf_counter() - t0:.1f}s; "
          f"weights {sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9:.2f} GB", flush=True)
    return llm


def fake_prefilled(llm: Any, batch: int, prompt: int, new_tokens: int, gen: torch.Generator) -> list[Any]:
    """``batch`` running sequences whose ``prompt - 1`` first tokens count as cached (the cache
    holds random latents), so the next engine step is a decode step at context ``prompt``."""
    from dseval.engine.block_manager import PrefixLookup
    from dseval.engine.sequence import SamplingParams, Sequence, SequenceStatus

    seqs = []
    vocab = llm.config.vocab_size
    for _ in range(batch):
        ids = torch.randint(2, vocab, (prompt,), generator=gen).tolist()
        seq = Sequence(ids, SamplingParams(max_tokens=new_tokens + 8, ignore_eos=True))
        llm.block_manager.admit(seq, PrefixLookup([], False))
        llm.block_manager.ensure_slots(seq, prompt - 1)
        seq.num_computed_tokens = prompt - 1
        seq.status = SequenceStatus.RUNNING
        llm.scheduler.running.append(seq)
        seqs.append(seq)
    return seqs


def release(llm: Any) -> None:
    for seq in list(llm.scheduler.running):
        llm.scheduler.finish(seq)
    llm.scheduler.waiting.clear()


def time_decode_cell(llm: Any, batch: int, prompt: int, args: argparse.Namespace) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(batch * 100003 + prompt)
    fake_prefilled(llm, batch, prompt, args.new_tokens + args.warmup_steps, gen)
    try:
        for _ in range(args.warmup_steps):  # first steps capture the graph(s)
            llm.step()
        sync()
        times = []
        for _ in range(args.new_tokens):
            t0 = time.perf_counter()
            llm.step()  # ends in a host sync (sampled tokens to the host)
            times.append(time.perf_counter() - t0)
        step_ms = 1e3 * sorted(times)[len(times) // 2]
        mean_ms = 1e3 * sum(times) / len(times)
        replay_ms = None
        runner = llm.runner
        if runner.graphs is not None and runner.graphs.graphs and torch.cuda.is_available():
            bucket = runner.graphs.bucket(batch)
            keys = [k for k in runner.graphs.graphs if k[0] == bucket]
            if keys:
                g = runner.graphs.graphs[max(keys, key=lambda k: k[1])].graph
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                g.replay()
                start.record()
                for _ in range(10):
                    g.replay()
                end.record()
                sync()
                replay_ms = start.elapsed_time(end) / 10
    finally:
        release(llm)
    return {"batch": batch, "prompt": prompt, "step_ms": step_ms, "mean_step_ms": mean_ms,
            "tok_s": batch * 1e3 / mean_ms, "replay_ms": replay_ms,
            "graphs": len(llm.runner.graphs.graphs) if llm.runner.graphs else 0}


def run_e2e(llm: Any, batch: int, prompt: int, args: argparse.Namespace) -> dict[str, Any]:
    from dseval.engine.sequence import SamplingParams

    gen = torch.Generator().manual_seed(7 + batch)
    prompts = [torch.randint(2, llm.config.vocab_size, (prompt,), generator=gen).tolist() for _ in range(batch)]
    params = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)
    sync()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    sync()
    total = time.perf_counter() - t0
    n = sum(len(o.token_ids) for o in outs)
    return {"batch": batch, "prompt": prompt, "seconds": total, "generated": n, "tok_s": n / total}


def prefill_flops(cfg: Any, n: int) -> float:
    """Matmul FLOPs of prefilling ``n`` tokens (linears with active experts + causal attention)."""
    f = step_floor_bytes(cfg, 1, 0)
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    expert = 3 * h * cfg.moe_intermediate_size
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    # per token: every layer's weights except routed experts not chosen; head only for the last token
    active = (f["weights"] - 2 * cfg.vocab_size * h - n_moe * (f["distinct_experts"] - cfg.num_experts_per_tok) * expert)
    attn = cfg.num_hidden_layers * heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * n * n
    expand = cfg.num_hidden_layers * 2 * n * cfg.kv_lora_rank * heads * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    return 2 * active * n + attn + expand


def bench_prefill_attention(cfg: Any, t: int, s: int, device: torch.device) -> dict[str, Any]:
    """One chunk's attention (t queries at the end of s keys, all heads) per backend."""
    from dseval.kernels import mla_prefill as mp

    h, nope, rope, vd = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    g = torch.Generator(device=device).manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device, dtype=torch.bfloat16)

    args = (r(t, h, nope), r(t, h, rope), r(s, h, nope), r(s, rope), r(s, h, vd))
    flops = h * (nope + rope + vd) * 2 * (t * (s - t) + t * t / 2)
    res: dict[str, Any] = {"t": t, "s": s}
    ref = None
    for name in mp.PREFILL_BACKENDS[1:]:  # the explicit ones; "auto" is split_cudnn or causal_bias
        try:
            mp.set_prefill_backend(name)
            out = mp.mla_prefill_attention(*args, 0.1)
            sync()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(3):
                out = mp.mla_prefill_attention(*args, 0.1)
            e1.record()
            sync()
            ms = e0.elapsed_time(e1) / 3
            ref = out.float() if ref is None else ref
            rel = ((out.float() - ref).norm() / ref.norm()).item()
            res[name] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_vs_causal_bias": rel}
        except Exception as e:  # noqa: BLE001 (a backend may be missing on this build)
            res[name] = {"error": repr(e)[:300]}
        print(f"prefill attention {name}: {res[name]}", flush=True)
        free_memory()
    mp.set_prefill_backend("auto")
    ok = {k: v["ms"] for k, v in res.items() if isinstance(v, dict) and "ms" in v and v["rel_vs_causal_bias"] < 2e-2}
    res["best"] = min(ok, key=ok.get) if ok else "causal_bias"
    return res


def run_prefill(llm: Any, length: int) -> dict[str, Any]:
    from dseval.engine.sequence import SamplingParams

    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(2, llm.config.vocab_size, (length,), generator=gen).tolist()
    steps0 = llm.stats.prefill_steps
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    llm.generate([prompt], SamplingParams(max_tokens=1, ignore_eos=True))
    sync()
    sec = time.perf_counter() - t0
    flops = prefill_flops(llm.config, length)
    return {"tokens": length, "seconds": sec, "tok_s": length / sec, "chunks": llm.stats.prefill_steps - steps0,
            "tflops": flops / sec / 1e12,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def run_checks(llm: Any, cfg: Any, lengths: tuple[int, ...] = (300, 77, 1030)) -> dict[str, Any]:
    """Graph-replayed decode vs expanded prefill of the same tokens; fused vs reference MoE."""
    from dseval.engine.model_runner import RowSpec
    from dseval.engine.moe import MoE
    from dseval.engine.sequence import SamplingParams, Sequence

    out: dict[str, Any] = {}
    runner, model, bs = llm.runner, llm.model, llm.engine_config.block_size
    gen = torch.Generator().manual_seed(11)
    lens = [min(n, llm.max_model_len - 4) for n in lengths]  # 3 sequences -> graph bucket 4 (one padded)
    seqs, ref_rows, pre_rows, dec_rows = [], [], [], []
    next_block = 0
    for n in lens:
        ids = torch.randint(2, cfg.vocab_size, (n + 1,), generator=gen).tolist()
        s = Sequence(ids, SamplingParams(max_tokens=1))
        nb = -(-(n + 1) // bs)
        s.block_table = list(range(next_block, next_block + nb))
        next_block += nb
        seqs.append(s)
        pre_rows.append(RowSpec(s, 0, ids[:n]))
        dec_rows.append(RowSpec(s, n, ids[n:]))
        ref_rows.append((ids, nb))
    with torch.inference_mode():
        inp = runner.prepare(pre_rows, absorbed=False)
        model(inp.input_ids, inp.positions, inp.meta)  # fills the cache
        inp = runner.prepare(dec_rows, absorbed=True, static=True)
        bucket = runner.graphs.bucket(len(lens)) if runner.graphs is not None else None
        if bucket is not None:
            hidden = runner._run_graph(inp, bucket).clone()
            out["bucket"] = bucket
        else:
            hidden = model(inp.input_ids, inp.positions, inp.meta)
        dec_logits = model.compute_logits(hidden)
        # same step through the reference attention loop (eager): isolates mla_decode + graph
        import dseval.engine.mla as mla_mod

        keep_fn = mla_mod.one_query_per_sequence
        mla_mod.one_query_per_sequence = lambda *a: False
        try:
            inp = runner.prepare(dec_rows, absorbed=True, static=True)
            loop_logits = model.compute_logits(model(inp.input_ids, inp.positions, inp.meta))
        finally:
            mla_mod.one_query_per_sequence = keep_fn
        out["graph_decode_vs_loop_rel"] = ((dec_logits - loop_logits).norm() / loop_logits.norm()).item()
        # one layer's attention alone, same cache and queries: kernels.mla_decode vs the loop
        from dseval.engine.mla import paged_mla

        attn = model.model.layers[0].self_attn
        n_seq = len(lens)
        g = torch.Generator(device=llm.device).manual_seed(5)
        qn = torch.randn(n_seq, attn.n_heads, attn.nope, generator=g, device=llm.device, dtype=torch.bfloat16)
        qp = torch.randn(n_seq, attn.n_heads, attn.rope_dim, generator=g, device=llm.device, dtype=torch.bfloat16)
        inp = runner.prepare(dec_rows, absorbed=True, static=True)
        fast = paged_mla(attn, qn, qp, inp.positions, inp.meta, runner.kv_caches[0])
        mla_mod.one_query_per_sequence = lambda *a: False
        try:
            slow = paged_mla(attn, qn, qp, inp.positions, inp.meta, runner.kv_caches[0])
        finally:
            mla_mod.one_query_per_sequence = keep_fn
        out["layer0_attention_fused_vs_loop_rel"] = ((fast.float() - slow.float()).norm() / slow.float().norm()).item()
        # reference: whole prompt + token as one expanded prefill (rewrites the same blocks)
        ref = []
        for s, (ids, _nb) in zip(seqs, ref_rows):
            inp = runner.prepare([RowSpec(s, 0, ids)], absorbed=False)
            h = model(inp.input_ids, inp.positions, inp.meta)
            ref.append(model.compute_logits(h[-1:]))
        ref_logits = torch.cat(ref)
        rel = ((dec_logits - ref_logits).norm() / ref_logits.norm()).item()
        top1 = (dec_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
        out["decode_vs_prefill_rel"] = rel
        out["decode_vs_prefill_rel_rows"] = ((dec_logits - ref_logits).norm(dim=-1) / ref_logits.norm(dim=-1)).tolist()
        out["decode_vs_prefill_top1"] = top1
        moe = next((m for m in model.modules() if isinstance(m, MoE)), None)
        if moe is not None and getattr(moe, "fused_experts", None) is not None:
            x = torch.randn(64, cfg.hidden_size, device=llm.device, dtype=torch.bfloat16)
            w, ids = moe.gate(x)
            fused = moe.routed(x, w, ids)
            keep, moe.fused_experts = moe.fused_experts, None
            try:
                loop = moe.routed(x, w, ids)
            finally:
                moe.fused_experts = keep
            out["fused_moe_rel"] = ((fused - loop).norm() / loop.norm()).item()
    # A row may differ more when bf16 noise flips a near-tied expert choice (then top-1 still
    # agrees); the median row must sit at bf16 level.
    # Prefill runs W8A8 GEMMs (activations quantized to e4m3) and decode W8A16 ones, and the
    # fused MoE quantizes activations where the per-expert loop does not: those comparisons
    # carry FP8 activation noise (a few %) through random layers. The graph-vs-loop decode
    # comparison has identical GEMMs and must sit at bf16 level.
    out["pass"] = bool(out["layer0_attention_fused_vs_loop_rel"] < 1e-2 and out.get("fused_moe_rel", 0.0) < 6e-2)
    print(f"check: {out}", flush=True)
    return out


# ---------------------------------------------------------------------------------------- transformers
def hf_generate_seconds(model: Any, ids: torch.Tensor, n: int) -> float:
    """Wall time of transformers' greedy ``generate`` of exactly ``n`` new tokens."""
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, eos_token_id=None, pad_token_id=0)
    sync()
    return time.perf_counter() - t0


def run_hf(cfg: Any, args: argparse.Namespace, device: torch.device, report: Report, floor_of: Any) -> None:
    import transformers
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    raw = json.loads(W3_CONFIG.read_text())
    for k in ("quantization_config", "architectures", "torch_dtype"):
        raw.pop(k, None)
    raw["num_hidden_layers"] = cfg.num_hidden_layers
    if args.tiny:
        raw.update(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                   moe_intermediate_size=cfg.moe_intermediate_size, num_attention_heads=cfg.num_attention_heads,
                   num_key_value_heads=cfg.num_attention_heads, q_lora_rank=cfg.q_lora_rank,
                   vocab_size=cfg.vocab_size, n_routed_experts=cfg.n_routed_experts, n_group=cfg.n_group,
                   topk_group=cfg.topk_group, num_experts_per_tok=cfg.num_experts_per_tok)
    hcfg = DeepseekV3Config(**raw)
    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = DeepseekV3ForCausalLM(hcfg).to(torch.bfloat16).eval()
    finally:
        torch.set_default_dtype(prev)
    sync()
    report.data["meta"]["transformers"] = transformers.__version__
    print(f"transformers {transformers.__version__}: built in {time.perf_counter() - t0:.1f}s", flush=True)
    t_start = time.perf_counter()
    cells = [(b, p) for p in args.hf_prompts for b in args.batches]
    for b, p in cells:
        if time.perf_counter() - t_start > args.hf_budget_s:
            report.data["skipped"].append({"engine": "hf", "batch": b, "prompt": p, "why": "hf time budget"})
            continue
        try:
            gen = torch.Generator().manual_seed(5)
            ids = torch.randint(2, cfg.vocab_size, (b, p), generator=gen).to(device)
            hf_generate_seconds(model, ids, 2)  # warm-up
            t1 = hf_generate_seconds(model, ids, 1)
            tn = hf_generate_seconds(model, ids, args.new_tokens)
            step = (tn - t1) / (args.new_tokens - 1)
            row = {"batch": b, "prompt": p, "step_ms": 1e3 * step, "tok_s": b / step, "prefill_s": t1}
            report.data["hf"].append(row)
            print(f"hf B={b} P={p}: {row['tok_s']:.1f} tok/s ({row['step_ms']:.2f} ms/step)", flush=True)
        except torch.cuda.OutOfMemoryError as e:
            report.data["skipped"].append({"engine": "hf", "batch": b, "prompt": p, "why": f"OOM: {e!s:.200}"})
            free_memory()
        except Exception as e:  # noqa: BLE001 (one failed cell must not end the run)
            report.error(f"hf B={b} P={p}", e)
        report.save()
    del model
    free_memory()


# ---------------------------------------------------------------------------------------- table
def print_table(report: Report, bandwidth: float) -> None:
    d = report.data
    hf = {(r["batch"], r["prompt"]): r for r in d["hf"]}
    print("\n| batch | prompt | dseval tok/s | ms/step | graph replay ms | floor ms | x floor (step) | "
          "x floor (replay) | HF tok/s | x HF |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in d["dseval"]:
        f = r["floor_ms"]
        h = hf.get((r["batch"], r["prompt"]))
        rep = f"{r['replay_ms']:.3f}" if r.get("replay_ms") else "-"
        xr = f"{r['replay_ms'] / f:.2f}" if r.get("replay_ms") else "-"
        print(f"| {r['batch']} | {r['prompt']} | {r['tok_s']:.0f} | {r['mean_step_ms']:.3f} | {rep} | {f:.3f} | "
              f"{r['mean_step_ms'] / f:.2f} | {xr} | {h['tok_s']:.1f} | {r['tok_s'] / h['tok_s']:.1f} |"
              if h else
              f"| {r['batch']} | {r['prompt']} | {r['tok_s']:.0f} | {r['mean_step_ms']:.3f} | {rep} | {f:.3f} | "
              f"{r['mean_step_ms'] / f:.2f} | {xr} | - | - |")
    for r in d["e2e"]:
        print(f"e2e generate B={r['batch']} P={r['prompt']}: {r['tok_s']:.0f} tok/s incl. prefill ({r['seconds']:.2f}s)")
    if d["prefill"]:
        p = d["prefill"]
        for p in d.get("prefill_runs", [d["prefill"]]):
            print(f"prefill {p['tokens']} tokens, batch 1, attention {p.get('attention_backend')}: {p['seconds']:.2f}s "
                  f"({p['tok_s']:.0f} tok/s, {p['tflops']:.0f} TFLOP/s, {p['chunks']} chunks, peak {p['peak_gib']} GiB)")
    if d["check"]:
        print(f"check: {d['check']}")
    for s in d["skipped"]:
        print(f"skipped: {s}")
    for e in d["errors"]:
        print(f"error in {e['phase']}: {e['error']}")


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=3, help="decoder layers (first dense, rest MoE)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--prompts", type=int, nargs="+", default=[256, 4096, 32768])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--prefill-len", type=int, default=131072, help="0 skips the long prefill")
    ap.add_argument("--chunk", type=int, default=16384, help="prefill token budget per step")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--kv-blocks", type=int, default=0, help="0: enough for the largest cell")
    ap.add_argument("--hf-prompts", type=int, nargs="+", default=[256])
    ap.add_argument("--hf-budget-s", type=float, default=120.0)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], choices=["check", "decode", "e2e", "prefill"])
    ap.add_argument("--deadline-s", type=float, default=1e9, help="start no new phase after this many seconds")
    ap.add_argument("--bandwidth", type=float, default=4.24e12, help="bytes/s for the floor (H200 copy rate)")
    ap.add_argument("--tiny", action="store_true", help="shrunken dims: CPU smoke test of the script")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "engine_w3.json"))
    args = ap.parse_args(argv)
    t_begin = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = w3_config(args.layers, args.tiny)
    need_blocks = max(max(args.batches) * -(-(max(args.prompts) + args.new_tokens + args.warmup_steps + 2)
                                            // args.block_size),
                      -(-(args.prefill_len + 8) // args.block_size)) + 2048 // args.block_size + 64
    args.kv_blocks = args.kv_blocks or need_blocks
    paths = [Path(args.out)] + ([Path(os.environ["OUT"]) / Path(args.out).name] if os.environ.get("OUT") else [])
    meta = {"argv": sys.argv, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "layers": args.layers, "bandwidth": args.bandwidth,
            "new_tokens": args.new_tokens, "block_size": args.block_size, "kv_blocks": args.kv_blocks,
            "chunk": args.chunk, "tiny": args.tiny, "cuda_graphs": not args.no_graphs,
            "decode_method": "cache filled with random latents (no prefill); mean of timed LLM.step calls"}
    report = Report(paths, meta)

    def late() -> bool:
        return time.perf_counter() - t_begin > args.deadline_s

    if device.type == "cuda":  # the copy ceiling on this card (bytes read + written per second)
        a = torch.empty(2**31, dtype=torch.uint8, device=device)
        b = torch.empty_like(a)
        b.copy_(a)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(10):
            b.copy_(a)
        e1.record()
        sync()
        meta["copy_tb_s"] = 2 * a.numel() * 10 / (e0.elapsed_time(e1) * 1e-3) / 1e12
        print(f"device copy rate {meta['copy_tb_s']:.2f} TB/s (floor uses {args.bandwidth / 1e12:.2f})", flush=True)
        del a, b
        free_memory()
    llm = build_llm(cfg, args, device)
    report.data["meta"]["weights_gb"] = sum(p.numel() * p.element_size() for p in llm.model.parameters()) / 1e9
    if "check" not in args.skip:
        try:
            report.data["check"] = run_checks(llm, cfg)
        except Exception as e:  # noqa: BLE001
            report.error("check", e)
        report.save()
    if "decode" not in args.skip:
        for p in sorted(args.prompts):
            for b in args.batches:
                if late():
                    report.data["skipped"].append({"engine": "dseval", "batch": b, "prompt": p, "why": "deadline"})
                    continue
                try:
                    r = time_decode_cell(llm, b, p, args)
                    f = step_floor_bytes(cfg, b, p)
                    r.update(floor_ms=1e3 * f["total"] / args.bandwidth, floor_weights_gb=f["weights"] / 1e9,
                             floor_kv_gb=f["kv"] / 1e9, distinct_experts=f["distinct_experts"])
                    report.data["dseval"].append(r)
                    print(f"dseval B={b} P={p}: {r['tok_s']:.0f} tok/s, step {r['mean_step_ms']:.3f} ms "
                          f"(replay {r['replay_ms']}), floor {r['floor_ms']:.3f} ms", flush=True)
                except torch.cuda.OutOfMemoryError as e:
                    release(llm)
                    report.data["skipped"].append({"engine": "dseval", "batch": b, "prompt": p, "why": f"OOM {e!s:.200}"})
                    free_memory()
                except Exception as e:  # noqa: BLE001
                    release(llm)
                    report.error(f"decode B={b} P={p}", e)
                    if llm.runner.graphs is not None:  # keep measuring, eagerly, rather than lose the run
                        print("disabling CUDA graphs for the remaining cells", flush=True)
                        llm.runner.graphs = None
                        report.data["meta"]["cuda_graphs"] = "disabled after an error"
                report.save()
    if "e2e" not in args.skip and not late():
        for b in (1, max(args.batches)):
            try:
                report.data["e2e"].append(run_e2e(llm, b, min(args.prompts), args))
            except Exception as e:  # noqa: BLE001
                release(llm)
                report.error(f"e2e B={b}", e)
            report.save()
    if "prefill" not in args.skip and args.prefill_len and not late():
        from dseval.kernels.mla_prefill import set_prefill_backend

        best = "causal_bias"
        if device.type == "cuda":
            try:
                att = bench_prefill_attention(cfg, min(args.chunk, args.prefill_len), args.prefill_len, device)
                report.data["prefill_attention"] = att
                best = att["best"]
            except Exception as e:  # noqa: BLE001
                report.error("prefill attention", e)
        try:  # compile the prefill kernels (first and continued chunks) outside the timing
            run_prefill(llm, min(2 * args.chunk, args.prefill_len))
        except Exception as e:  # noqa: BLE001
            report.error("prefill warm-up", e)
        for backend in dict.fromkeys([best, "causal_bias"]):
            if late():
                break
            try:
                set_prefill_backend(backend)
                r = run_prefill(llm, args.prefill_len)
                r["attention_backend"] = backend
                report.data.setdefault("prefill_runs", []).append(r)
                if not report.data["prefill"] or r["seconds"] < report.data["prefill"]["seconds"]:
                    report.data["prefill"] = r
                print(f"prefill ({backend}): {r}", flush=True)
            except Exception as e:  # noqa: BLE001
                release(llm)
                report.error(f"prefill {backend}", e)
            report.save()
        set_prefill_backend("auto")
    # tear down: graphs hold private memory pools until destroyed
    if llm.runner.graphs is not None:
        for step in llm.runner.graphs.graphs.values():
            step.graph.reset()
        llm.runner.graphs = None
    llm.runner.kv_caches.clear()
    del llm
    free_memory()
    if device.type == "cuda":
        report.data["meta"]["gib_in_use_before_hf"] = torch.cuda.memory_allocated() / 2**30
    if not args.no_hf and not late():
        try:
            run_hf(cfg, args, device, report, step_floor_bytes)
        except Exception as e:  # noqa: BLE001
            report.error("hf", e)
    report.data["meta"]["wall_s"] = time.perf_counter() - t_begin
    report.save()
    print_table(report, args.bandwidth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
