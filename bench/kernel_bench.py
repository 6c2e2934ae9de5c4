"""Microbenchmarks of dseval.kernels at DeepSeek-V3 ("W3") shapes, each in its default config.

    python bench/kernel_bench.py [--only quant norm rope mla gemm_decode moe gemm_prefill prefill_attn profile]
                                 [--out results/bench/kernel_bench.json]

Each row: kernel, shape, median time, achieved TB/s and/or TFLOP/s, and the share of the
measured H200 ceilings (4.24 TB/s copy, 1346 TFLOP/s FP8, 763 TFLOP/s bf16); how each is timed
is in bench/common.py. Correctness lives in bench/kernel_checks.py, launch-config grids in
bench/kernel_sweep.py. The JSON is rewritten after every section, so a timed-out run keeps what
it measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import (cudnn_prefill_attention, BF16_CEIL, HEADS, HID, KVLORA, LINEARS, MOE_I, N_EXP, NOPE, ROOT, ROPE, TOPK, K, bench, bench_graph,
                    copies, json_writer, linear_bytes, mla_inputs, moe_flops, moe_fp8_weights,
                    prefill_attention_flops, prefill_attention_inputs, print_summary, rand_linear, record,
                    record_profile, rel, require_gpu, routed_tokens, run_sections)


def bench_quant() -> None:
    for m in (1, 64, 4096):
        x = torch.randn(m, HID, device="cuda", dtype=torch.bfloat16)
        sec = bench(lambda: K.per_token_group_quant_fp8(x))
        record("quant_fp8_1x128", f"M={m} K={HID}", sec, nbytes=m * HID * (2 + 1) + m * HID // 32)


def bench_norm() -> None:
    for t in (1, 64, 4096):
        x = torch.randn(t, HID, device="cuda", dtype=torch.bfloat16)
        r = torch.randn_like(x)
        w = torch.rand(HID, device="cuda", dtype=torch.bfloat16)
        sec = bench(lambda: K.rms_norm(x, w, 1e-6, residual=r))
        record("rms_norm+residual", f"T={t} H={HID}", sec, nbytes=4 * t * HID * 2 + HID * 2)


def bench_rope() -> None:
    """MLA's rotary + latent-cache kernel at W3 shapes: decode batches and a 16K prefill chunk.
    The small rows are eager launches, so they show host time, not kernel time."""
    half = ROPE // 2
    for t in (1, 32, 16384):
        q = torch.randn(t, HEADS, NOPE + ROPE, device="cuda", dtype=torch.bfloat16)
        kv = torch.randn(t, KVLORA + ROPE, device="cuda", dtype=torch.bfloat16)
        pos = torch.arange(t, device="cuda")
        ang = torch.arange(t, device="cuda", dtype=torch.float32)[:, None] * torch.rand(half, device="cuda")
        cos, sin = ang.cos(), ang.sin()
        w = torch.rand(KVLORA, device="cuda", dtype=torch.bfloat16)
        cache = torch.empty(-(-t // 64), 64, KVLORA + ROPE, device="cuda", dtype=torch.bfloat16)
        slots = torch.randperm(cache.shape[0] * 64, device="cuda")[:t]
        sec = bench(lambda: K.mla_rope_and_cache(q, kv, pos, cos, sin, w, 1e-6, cache, slots, True))
        record("mla rope + cache", f"T={t} H={HEADS}", sec, nbytes=t * (2 * HEADS * ROPE + 2 * (KVLORA + ROPE)) * 2)


def bench_gemm_decode() -> None:
    """Each W3 linear at decode M through the skinny W8A16 kernel (and cuBLAS where the engine
    may send it), as graph replays; two eager rows show what launch overhead costs."""
    for name, (n, k) in LINEARS.items():
        nc = copies(n * k)
        ws_list = [rand_linear(n, k) for _ in range(nc)]
        for m in (1, 4, 8, 16, 32, 64):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            cfg = K.fp8_gemm.default_skinny_config(m, n, k, x.device)
            fns = [(lambda w=w, ws=ws: K.fp8_linear(x, w, ws, backend="skinny")) for w, ws in ws_list]
            sec = bench_graph(fns)
            auto_sk = m <= K.SKINNY_M_MAX and not (
                m >= K.fp8_gemm.SCALED_MM_MIN_M and n * k >= K.fp8_gemm.SCALED_MM_MIN_WEIGHT_BYTES
                and K.scaled_mm_is_safe(m, n, k))
            record("fp8_linear skinny", f"{name} M={m} N={n} K={k}", sec, nbytes=linear_bytes(m, n, k),
                   cfg=f"bn={cfg.block_n} split={cfg.split_k} graph x{nc}" + (" [auto]" if auto_sk else ""))
            if m in (16, 32, 64) and K.scaled_mm_is_safe(m, n, k):
                fns = [(lambda w=w, ws=ws: K.fp8_linear(x, w, ws, backend="scaled_mm")) for w, ws in ws_list]
                sec = bench_graph(fns)
                record("fp8_linear scaled_mm", f"{name} M={m} N={n} K={k}", sec, nbytes=linear_bytes(m, n, k),
                       cfg=f"graph x{nc}" + ("" if auto_sk else " [auto]"))
            if m == 1 and name in ("wq_a", "wo"):
                sec = bench(lambda: K.fp8_linear(x, ws_list[0][0], ws_list[0][1]))
                record("fp8_linear eager", f"{name} M={m} N={n} K={k}", sec, nbytes=linear_bytes(m, n, k),
                       cfg="do_bench eager (includes launch overhead)")


def bench_gemm_prefill() -> None:
    """Each W3 linear at prefill M through every applicable backend, and cuBLAS on
    pre-quantized activations to separate the quantization's cost."""
    for name, (n, k) in LINEARS.items():
        w, ws = rand_linear(n, k)
        for m in (128, 512, 4096):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            fl = 2.0 * m * n * k
            backends = ["w8a8"] + (["scaled_mm"] if K.scaled_mm_is_safe(m, n, k) else [])
            if m <= 128:
                backends.append("skinny")
            for be in backends:
                sec = bench(lambda: K.fp8_linear(x, w, ws, backend=be))
                record(f"fp8_linear {be}", f"{name} M={m} N={n} K={k}", sec, flops=fl,
                       nbytes=linear_bytes(m, n, k))
            if m == 4096 and K.scaled_mm_is_safe(m, n, k):
                qx, sx = K.per_token_group_quant_fp8(x, column_major_scales=True)
                sec = bench(lambda: torch._scaled_mm(qx, w.t(), scale_a=sx, scale_b=ws.t(), out_dtype=torch.bfloat16))
                record("_scaled_mm only", f"{name} M={m}", sec, flops=fl)


def bench_moe() -> None:
    """The fused MoE over all 256 experts from decode (graph replays) to prefill sizes, and the
    bf16 path on 64 experts (what fits in memory)."""
    w13, s13, w2, s2 = moe_fp8_weights()
    per_expert_bytes = 3 * MOE_I * HID
    for t in (1, 8, 32, 128, 512, 4096):
        x, ids, wts = routed_tokens(t)
        active = int(torch.unique(ids).numel())
        if t <= 128:
            sec = bench_graph([lambda: K.fused_moe(x, w13, s13, w2, s2, ids, wts)])
        else:
            sec = bench(lambda: K.fused_moe(x, w13, s13, w2, s2, ids, wts))
        cfg = K.moe.default_moe_config(t, TOPK, N_EXP, True)
        record("fused_moe fp8", f"T={t} E=256 k=8 active={active}", sec,
               nbytes=active * per_expert_bytes + t * HID * 4, flops=moe_flops(t),
               cfg=f"bm={cfg.block_m} bn1={cfg.block_n1} bn2={cfg.block_n2} w={cfg.num_warps}"
                   + (" unfused" if cfg.unfused_gate_up else ""))
    e = 64
    w13b = torch.randn(e, 2 * MOE_I, HID, device="cuda", dtype=torch.bfloat16) * 0.02
    w2b = torch.randn(e, HID, MOE_I, device="cuda", dtype=torch.bfloat16) * 0.02
    for t in (8, 4096):
        x, ids, wts = routed_tokens(t, experts=e)
        active = int(torch.unique(ids).numel())
        sec = bench(lambda: K.fused_moe(x, w13b, None, w2b, None, ids, wts))
        record("fused_moe bf16", f"T={t} E={e} k=8 active={active}", sec,
               nbytes=active * per_expert_bytes * 2, flops=moe_flops(t), flop_ceil=BF16_CEIL)


def bench_mla() -> None:
    """Paged MLA decode at 16 heads (V3 per rank at TP8) and 128 heads, as graph replays."""
    for b, h, ctx in ((1, 16, 32768), (1, 16, 131072), (8, 16, 32768), (32, 16, 32768),
                      (1, 128, 32768), (8, 128, 32768), (64, 128, 4096)):
        caches, bt, cl, qn, qp, nbytes, fl = mla_inputs(b, h, ctx, 64)
        sec = bench_graph([(lambda c=c: K.mla_decode(qn, qp, c, bt, cl, 0.1)) for c in caches])
        record("mla_decode", f"B={b} H={h} ctx={ctx}", sec, nbytes=nbytes, flops=fl, flop_ceil=BF16_CEIL,
               cfg=f"graph x{len(caches)}")


def bench_prefill_attention() -> None:
    """W3 prefill attention (128 heads, one 16K-query chunk at the end of 16K / 64K / 128K keys):
    bf16 cuDNN (the engine's default) against the FP8 Triton kernel, with the FP8 kernel's
    distance from cuDNN and, at 128K, a profile that separates its scale and quantization passes."""
    from torch.profiler import ProfilerActivity, profile

    from dseval.kernels import mla_prefill as mp
    from dseval.kernels.mla_prefill_fp8 import Fp8AttentionConfig, mla_prefill_attention_fp8

    g = torch.Generator(device="cuda").manual_seed(0)
    c = Fp8AttentionConfig()
    cudnn = cudnn_prefill_attention()
    t = 16384
    for s in (16384, 65536, 131072):
        args = prefill_attention_inputs(g, t, s)
        fl = prefill_attention_flops(t, s)
        shape = f"t={t} S={s} H={HEADS}"
        ref = mp.mla_prefill_attention(*args, 0.1, cudnn)
        record("prefill attn cudnn bf16", shape, bench(lambda: mp.mla_prefill_attention(*args, 0.1, cudnn), quick=True),
               flops=fl, flop_ceil=BF16_CEIL)
        err = rel(mla_prefill_attention_fp8(*args, 0.1), ref)
        sec = bench(lambda: mla_prefill_attention_fp8(*args, 0.1), quick=True)
        record("prefill attn fp8", shape, sec, flops=fl,
               cfg=f"bm={c.block_m} bn={c.block_n} w={c.num_warps} st={c.num_stages}", rel_vs_cudnn=err)
        if s == 131072:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                mla_prefill_attention_fp8(*args, 0.1)
                torch.cuda.synchronize()
            record_profile(f"prefill fp8 {shape}", prof, top=6)
        del args, ref
        torch.cuda.empty_cache()


def profile_kernels() -> None:
    """torch.profiler per-kernel GPU times for decode cases (separates GPU time from launch
    overhead, which eager calls of these sizes are dominated by)."""
    from torch.profiler import ProfilerActivity, profile

    w13, s13, w2, s2 = moe_fp8_weights()
    cases = []
    for t in (1, 8):
        x, ids, wts = routed_tokens(t)
        cases.append((f"moe T={t}", lambda x=x, ids=ids, wts=wts: K.fused_moe(x, w13, s13, w2, s2, ids, wts)))
    n, k = LINEARS["wo"]
    w, ws = rand_linear(n, k)
    x1 = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    cases.append(("wo M=1 skinny", lambda: K.fp8_linear(x1, w, ws)))
    b, h, ctx, bs = 8, 16, 32768, 64
    cache = torch.randn(b * ctx // bs, bs, KVLORA + ROPE, device="cuda", dtype=torch.bfloat16)
    bt = torch.arange(b * ctx // bs, device="cuda").view(b, -1)
    cl = torch.full((b,), ctx, device="cuda", dtype=torch.int32)
    qn = torch.randn(b, h, KVLORA, device="cuda", dtype=torch.bfloat16)
    qp = torch.randn(b, h, ROPE, device="cuda", dtype=torch.bfloat16)
    cases.append(("mla B=8 H=16 32K", lambda: K.mla_decode(qn, qp, cache, bt, cl, 0.1)))
    for name, fn in cases:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        print(f"--- profile {name} (5 calls) ---")
        record_profile(name, prof, top=12, calls=5)


SECTIONS = {
    "quant": bench_quant,
    "norm": bench_norm,
    "rope": bench_rope,
    "mla": bench_mla,
    "gemm_decode": bench_gemm_decode,
    "moe": bench_moe,
    "gemm_prefill": bench_gemm_prefill,
    "prefill_attn": bench_prefill_attention,
    "profile": profile_kernels,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "kernel_bench.json")
    ap.add_argument("--only", nargs="*", choices=list(SECTIONS), help="sections to run (default all)")
    args = ap.parse_args()
    require_gpu("bench/kernel_bench.py")
    save = json_writer(args.out)
    run_sections(SECTIONS, args.only or list(SECTIONS), save)
    print_summary(args.out)


if __name__ == "__main__":
    main()
