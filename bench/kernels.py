"""Microbenchmarks (and GPU correctness checks) for dseval.kernels on DeepSeek-V3 shapes.

Usage (GPU; works from a plain checkout, the package need not be installed):
    python bench/kernels.py --check              # float64 checks at real sizes, then all benches
    python bench/kernels.py --only mla gemm_decode
    python bench/kernels.py --only mla gemm_decode moe --sweep   # launch-config sweeps
    python bench/kernels.py --only focus         # targeted MLA-split / skinny sweep
    python bench/kernels.py --only profile       # torch.profiler per-kernel GPU times
    python bench/kernels.py --out results/bench/kernels.json   (the default)
    python bench/kernels.py --only gemm_tune mla_tune --sweep --tune-workers 15 --deadline-s 240 \
        --out results/bench/kernels_sweep_decode.json   # decode config grids (not in the default run;
                                                         # without --sweep: the defaults alone)

Each row: kernel, shape, median time, achieved TB/s (bytes = every input read once + every
output written once) and/or TFLOP/s, and % of the ceiling: 4.24 TB/s copy bandwidth,
1346 TFLOP/s FP8 (torch._scaled_mm tensor-wise), 763 TFLOP/s bf16 (H200, torch 2.11).

Timing: decode-sized ops (skinny GEMMs, decode MoE, MLA decode) are captured in a CUDA
graph (as the engine runs decode) over enough copies of the weights / KV cache (> 3x the
60 MB L2) that every call reads HBM; the time is the median graph replay / copies.
Prefill-sized ops use ``triton.testing.do_bench`` (median, L2 flushed before each rep),
which includes host launch overhead; that is negligible at those sizes.
JSON is rewritten after every section (tuning: after every shape), so a timed-out run keeps
what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a checkout imports without an install (the device machine has none)
from dseval.kernels import fp8_gemm, fp8_quant, mla_decode, mla_prefill, mla_rope, moe, norm, router  # noqa: E402

# One namespace over the kernel modules: K.<function> and K.<module>.<name>.
K = SimpleNamespace(**{name: getattr(mod, name) for mod in (fp8_quant, fp8_gemm, mla_decode, mla_prefill, mla_rope,
                                                            moe, norm, router) for name in getattr(mod, "__all__", ())},
                    fp8_gemm=fp8_gemm, fp8_quant=fp8_quant, moe=moe, mla_decode_module=mla_decode)

from triton.testing import do_bench

BW_CEIL = 4.24e12
FP8_CEIL = 1346e12
BF16_CEIL = 763e12

# DeepSeek-V3 ("W3") dimensions
HID, QLORA, KVLORA, HEADS, ROPE, NOPE, VDIM = 7168, 1536, 512, 128, 64, 128, 128
DENSE_I, MOE_I, N_EXP, TOPK, VOCAB = 18432, 2048, 256, 8, 129280

LINEARS: dict[str, tuple[int, int]] = {  # name: (N, K)
    "wq_a": (QLORA, HID),
    "wq_b": (HEADS * (NOPE + ROPE), QLORA),
    "wkv_a": (KVLORA + ROPE, HID),
    "wo": (HID, HEADS * VDIM),
    "dense_w13": (2 * DENSE_I, HID),
    "dense_w2": (HID, DENSE_I),
    "shared_w13": (2 * MOE_I, HID),
    "shared_w2": (HID, MOE_I),
}

SWEEP_LINEARS = ("wq_a", "wq_b", "wo", "dense_w13", "shared_w2")

ROWS: list[dict[str, Any]] = []
CHECKS: list[dict[str, Any]] = []


def rand_fp8(*shape: int, device: str = "cuda") -> torch.Tensor:
    """Random finite e4m3 codes without a float32 temporary (random sign, |v| <= 416)."""
    mag = torch.randint(0, 0x7E, shape, dtype=torch.uint8, device=device)
    sign = torch.randint(0, 2, shape, dtype=torch.uint8, device=device) << 7
    return (mag | sign).view(torch.float8_e4m3fn)


def rand_scales(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, device="cuda") * 2e-4 + 1e-4


def bench(fn: Callable[[], Any], quick: bool = False) -> float:
    """Median seconds (quick: fewer repetitions, for config sweeps)."""
    if quick:
        return do_bench(fn, warmup=5, rep=25, return_mode="median") * 1e-3
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3


def record(kernel: str, shape: str, sec: float, nbytes: float = 0.0, flops: float = 0.0, **extra: Any) -> None:
    row: dict[str, Any] = {"kernel": kernel, "shape": shape, "us": sec * 1e6}
    if nbytes:
        row["TB/s"] = nbytes / sec / 1e12
        row["%bw"] = 100 * nbytes / sec / BW_CEIL
    if flops:
        row["TFLOP/s"] = flops / sec / 1e12
        ceil = extra.pop("flop_ceil", FP8_CEIL)
        row["%flop"] = 100 * flops / sec / ceil
    row.update(extra)
    ROWS.append(row)
    print(fmt_row(row), flush=True)


def fmt_row(r: dict[str, Any]) -> str:
    s = f"{r['kernel']:<22} {r['shape']:<42} {r['us']:>10.1f} us"
    if "TB/s" in r:
        s += f"  {r['TB/s']:6.2f} TB/s ({r['%bw']:5.1f}% bw)"
    if "TFLOP/s" in r:
        s += f"  {r['TFLOP/s']:7.1f} TFLOP/s ({r['%flop']:5.1f}%)"
    if "cfg" in r:
        s += f"  {r['cfg']}"
    return s


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(name: str, err: float, tol: float, **extra: Any) -> None:
    ok = bool(err < tol) and math.isfinite(err)
    CHECKS.append({"check": name, "rel_err": err, "tol": tol, "ok": ok, **extra})
    print(f"CHECK {'OK  ' if ok else 'FAIL'} {name:<60} rel_err={err:.3e} tol={tol:.0e}", flush=True)


# ----------------------------------------------------------------------------------------
def run_checks() -> None:
    torch.manual_seed(0)
    # quantization: exact e4m3 codes vs the torch RNE reference
    x = torch.randn(4099, HID, device="cuda", dtype=torch.bfloat16) * 3
    q, s = K.per_token_group_quant_fp8(x, column_major_scales=True, pad_rows_to=4)
    qr, sr = K.per_token_group_quant_fp8_torch(x)
    mism = (q[:4099].view(torch.uint8) != qr.view(torch.uint8)).float().mean().item()
    check("quant codes mismatch fraction (M=4099,K=7168)", mism, 1e-6)
    check("quant scales", rel(s[:4099], sr), 1e-6)
    # the skinny GEMM's bit-level e4m3 -> bf16 conversion: identity rows of x read back every
    # code of the weight (NaN codes replaced by 0: 0 x NaN would poison every sum)
    codes = torch.arange(256, dtype=torch.uint8, device="cuda")
    codes[codes & 0x7F == 0x7F] = 0
    w = codes.view(torch.float8_e4m3fn).repeat(64, 1)  # [64, 256]: every row holds all codes
    eye = torch.eye(256, device="cuda", dtype=torch.bfloat16)
    got = torch.cat([K.fp8_gemm_w8a16_skinny(eye[j:j + 64], w, torch.ones(1, 2, device="cuda")) for j in range(0, 256, 64)])
    exact = (got.float() == codes.view(torch.float8_e4m3fn).float()[:, None]).all(dim=1)
    check("skinny GEMM reads every e4m3 code exactly (mismatched fraction)", 1.0 - exact.float().mean().item(), 1e-9)

    # fp8 linear: every backend vs float64 at real shapes, odd M included
    for name, (n, k) in LINEARS.items():
        w = rand_fp8(n, k)
        ws = rand_scales(math.ceil(n / 128), math.ceil(k / 128))
        wd = K.dequant_block_fp8_weight(w, ws).double()
        for m in (1, 5, 64, 130, 4093):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ wd.t()
            backends = ["auto", "skinny", "w8a8"]
            if K.scaled_mm_is_safe(m, n, k):
                backends.append("scaled_mm")
            if m in (5, 64):
                y = K.fp8_gemm_w8a16_skinny(x, w, ws, K.SkinnyConfig(swap_ab=False, split_k=3))
                check(f"skinny swap_ab=False split=3 {name} M={m}", rel(y, ref), 8e-3)
            for be in backends:
                if be == "skinny" and m > 130:
                    continue
                y = K.fp8_linear(x, w, ws, backend=be)
                tol = 8e-3 if be == "skinny" else 4e-2  # w8a8 paths quantize activations
                check(f"fp8_linear[{be}] {name} M={m} N={n} K={k}", rel(y, ref), tol)
    # the cuBLAS trap the guard avoids: K/128 = 5
    try:
        n, k, m = 256, 640, 128
        w, ws = rand_fp8(n, k), rand_scales(2, 5)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        qx, sx = K.per_token_group_quant_fp8(x, column_major_scales=True)
        y = torch._scaled_mm(qx, w.t(), scale_a=sx, scale_b=ws.t(), out_dtype=torch.bfloat16)
        ref = x.double() @ K.dequant_block_fp8_weight(w, ws).double().t()
        CHECKS.append({"check": "raw _scaled_mm K=640 (guarded trap)", "rel_err": rel(y, ref), "info": True})
        print("INFO raw _scaled_mm K=640 rel_err", rel(y, ref))
    except Exception as e:  # noqa: BLE001
        CHECKS.append({"check": "raw _scaled_mm K=640 (guarded trap)", "error": repr(e)[:200], "info": True})
    # N=576 (partial scale block): is the raw cuBLAS path right? (guard keeps it off)
    try:
        n, k, m = 576, HID, 256
        w, ws = rand_fp8(n, k), rand_scales(5, k // 128)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        qx, sx = K.per_token_group_quant_fp8(x, column_major_scales=True)
        y = torch._scaled_mm(qx, w.t(), scale_a=sx, scale_b=ws.t(), out_dtype=torch.bfloat16)
        ref = x.double() @ K.dequant_block_fp8_weight(w, ws).double().t()
        CHECKS.append({"check": "raw _scaled_mm N=576 (guarded)", "rel_err": rel(y, ref), "info": True})
        print("INFO raw _scaled_mm N=576 rel_err", rel(y, ref))
    except Exception as e:  # noqa: BLE001
        CHECKS.append({"check": "raw _scaled_mm N=576 (guarded)", "error": repr(e)[:200], "info": True})

    # MoE at real sizes (E=256, H=7168, I=2048, k=8), fp8 and bf16
    w13 = rand_fp8(N_EXP, 2 * MOE_I, HID)
    w2 = rand_fp8(N_EXP, HID, MOE_I)
    s13 = rand_scales(N_EXP, 2 * MOE_I // 128, HID // 128)
    s2 = rand_scales(N_EXP, HID // 128, MOE_I // 128) * 10
    for t in (1, 7, 300):
        x = torch.randn(t, HID, device="cuda", dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(N_EXP, device="cuda")[:TOPK] for _ in range(t)])
        wts = torch.softmax(torch.randn(t, TOPK, device="cuda"), -1)
        out = K.fused_moe(x, w13, s13, w2, s2, ids, wts)
        ref = K.fused_moe_torch(x, w13, s13, w2, s2, ids, wts)
        check(f"fused_moe fp8 T={t}", rel(out, ref), 6e-2)
        for ucfg in (K.MoeConfig(64, 128, 128, 4, 4, unfused_gate_up=True),
                     K.MoeConfig(128, 128, 128, 8, 3, unfused_gate_up=True)):
            out = K.fused_moe(x, w13, s13, w2, s2, ids, wts, ucfg)
            check(f"fused_moe fp8 unfused bm={ucfg.block_m} T={t}", rel(out, ref), 6e-2)
        w13b = K.dequant_block_fp8_weight(w13[:16], s13[:16]).bfloat16().contiguous()
        w2b = K.dequant_block_fp8_weight(w2[:16], s2[:16]).bfloat16().contiguous()
        ids16 = ids % 16
        outb = K.fused_moe(x, w13b, None, w2b, None, ids16, wts)
        refb = K.fused_moe_torch(x, w13b, None, w2b, None, ids16, wts)
        check(f"fused_moe bf16 (E=16) T={t}", rel(outb, refb), 1e-2)

    # MLA decode at real dims, paged, varied lengths
    for b, h, lens, bs in ((2, 128, [1000, 33000], 64), (3, 16, [1, 4097, 70000], 64), (2, 16, [129, 0], 16)):
        maxb = max(math.ceil(n / bs) for n in lens) + 1
        nb = b * maxb + 8
        cache = torch.randn(nb, bs, KVLORA + ROPE, device="cuda", dtype=torch.bfloat16)
        bt = torch.randperm(nb, device="cuda")[: b * maxb].view(b, maxb)
        cl = torch.tensor(lens, device="cuda", dtype=torch.int32)
        qn = torch.randn(b, h, KVLORA, device="cuda", dtype=torch.bfloat16)
        qp = torch.randn(b, h, ROPE, device="cuda", dtype=torch.bfloat16)
        scale = 0.1
        ref = K.mla_decode_torch(qn.double(), qp.double(), cache.double(), bt, cl, scale)
        for cfg in (None, K.MlaDecodeConfig(block_h=16, block_n=64, transposed=True, num_stages=3),
                    K.MlaDecodeConfig(block_h=64 if h > 16 else 16, block_n=32, num_warps=8, page_aligned=False)):
            out = K.mla_decode(qn, qp, cache, bt, cl, scale, config=cfg)
            check(f"mla_decode B={b} H={h} lens={lens} bs={bs} cfg={cfg}", rel(out, ref), 1e-2)

    # RMSNorm
    x = torch.randn(333, HID, device="cuda", dtype=torch.bfloat16)
    r = torch.randn(333, HID, device="cuda", dtype=torch.bfloat16)
    wn = torch.rand(HID, device="cuda", dtype=torch.bfloat16)
    y, hh = K.rms_norm(x, wn, 1e-6, residual=r)
    yr, hr = K.rms_norm_torch(x.double(), wn.double(), 1e-6, residual=r.double())
    check("rms_norm fused residual (y)", rel(y, yr), 8e-3)
    check("rms_norm fused residual (h)", rel(hh, hr), 8e-3)


# ----------------------------------------------------------------------------------------
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
    """MLA's rotary + latent-cache kernel at W3 shapes: decode batches and a 16K prefill chunk."""
    from dseval.kernels.mla_rope import mla_rope_and_cache

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
        sec = bench(lambda: mla_rope_and_cache(q, kv, pos, cos, sin, w, 1e-6, cache, slots, True))
        record("mla rope + cache", f"T={t} H={HEADS}", sec, nbytes=t * (2 * HEADS * ROPE + 2 * (KVLORA + ROPE)) * 2)


def _linear_bytes(m: int, n: int, k: int) -> float:
    return n * k + math.ceil(n / 128) * math.ceil(k / 128) * 4 + m * k * 2 + m * n * 2


def bench_graph(fns: list[Callable[[], Any]], reps: int = 20) -> float:
    """Median seconds per call of ``fns`` captured back to back in one CUDA graph.

    Decode steps run under CUDA graphs in the engine, so this excludes Python/launch
    overhead. Each fn closes over its own copy of the big operand, and callers pass
    enough copies (> ~3x the 60 MB L2) that every call reads from HBM.
    """
    for f in fns:
        f()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    del g
    return times[len(times) // 2] * 1e-3 / len(fns)


def _copies(nbytes: float, cap: int = 24) -> int:
    return max(1, min(cap, math.ceil(200e6 / max(nbytes, 1))))


def bench_gemm_decode(sweep: bool) -> None:
    for name, (n, k) in LINEARS.items():
        nc = _copies(n * k)
        ws_list = [(rand_fp8(n, k), rand_scales(math.ceil(n / 128), math.ceil(k / 128))) for _ in range(nc)]
        for m in (1, 4, 8, 16, 32, 64):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            cfg = K.fp8_gemm.default_skinny_config(m, n, k, x.device)
            fns = [(lambda w=w, ws=ws: K.fp8_linear(x, w, ws, backend="skinny")) for w, ws in ws_list]
            sec = bench_graph(fns)
            auto_sk = m <= K.SKINNY_M_MAX and not (
                m >= K.fp8_gemm.SCALED_MM_MIN_M and n * k >= K.fp8_gemm.SCALED_MM_MIN_WEIGHT_BYTES
                and K.scaled_mm_is_safe(m, n, k))
            record("fp8_linear skinny", f"{name} M={m} N={n} K={k}", sec, nbytes=_linear_bytes(m, n, k),
                   cfg=f"bn={cfg.block_n} split={cfg.split_k} graph x{nc}" + (" [auto]" if auto_sk else ""))
            if m in (16, 32, 64) and K.scaled_mm_is_safe(m, n, k):
                fns = [(lambda w=w, ws=ws: K.fp8_linear(x, w, ws, backend="scaled_mm")) for w, ws in ws_list]
                sec = bench_graph(fns)
                record("fp8_linear scaled_mm", f"{name} M={m} N={n} K={k}", sec, nbytes=_linear_bytes(m, n, k),
                       cfg=f"graph x{nc}" + ("" if auto_sk else " [auto]"))
            if m == 1 and name in ("wq_a", "wo"):
                sec = bench(lambda: K.fp8_linear(x, ws_list[0][0], ws_list[0][1]))
                record("fp8_linear eager", f"{name} M={m} N={n} K={k}", sec, nbytes=_linear_bytes(m, n, k),
                       cfg="do_bench eager (includes launch overhead)")
            if sweep and m in (1, 32) and name in SWEEP_LINEARS:
                kb = math.ceil(k / 128)
                for bn in (32, 64, 128):
                    for split in sorted({1, 4, 8, max(1, kb // 4), max(1, kb // 2)}):
                        for warps, stages, swap in ((4, 4, True), (8, 4, True), (4, 6, True), (4, 4, False)):
                            if bn < 64 and swap:
                                continue
                            c = K.SkinnyConfig(block_n=bn, split_k=split, num_warps=warps, num_stages=stages,
                                               swap_ab=swap)
                            fns = [(lambda w=w, ws=ws, c=c: K.fp8_gemm_w8a16_skinny(x, w, ws, c)) for w, ws in ws_list]
                            try:
                                sec = bench_graph(fns, reps=5)
                            except Exception as e:  # noqa: BLE001
                                print("sweep fail", c, repr(e)[:100])
                                continue
                            record("sweep skinny", f"{name} M={m}", sec, nbytes=_linear_bytes(m, n, k),
                                   cfg=f"bn={bn} split={split} w={warps} st={stages} swap={swap}")


def bench_gemm_prefill(sweep: bool) -> None:
    for name, (n, k) in LINEARS.items():
        w = rand_fp8(n, k)
        ws = rand_scales(math.ceil(n / 128), math.ceil(k / 128))
        for m in (128, 512, 4096):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            fl = 2.0 * m * n * k
            backends = ["w8a8"] + (["scaled_mm"] if K.scaled_mm_is_safe(m, n, k) else [])
            if m <= 128:
                backends.append("skinny")
            for be in backends:
                sec = bench(lambda: K.fp8_linear(x, w, ws, backend=be))
                record(f"fp8_linear {be}", f"{name} M={m} N={n} K={k}", sec, flops=fl,
                       nbytes=_linear_bytes(m, n, k))
            if m == 4096:
                # GEMM only (activation pre-quantized), to separate quantization cost
                qx, sx = K.per_token_group_quant_fp8(x, column_major_scales=True)
                if K.scaled_mm_is_safe(m, n, k):
                    sec = bench(lambda: torch._scaled_mm(qx, w.t(), scale_a=sx, scale_b=ws.t(),
                                                         out_dtype=torch.bfloat16))
                    record("_scaled_mm only", f"{name} M={m}", sec, flops=fl)
                if sweep:
                    for bm, bn, warps, st in ((128, 128, 8, 3), (128, 128, 4, 4), (64, 128, 4, 4),
                                              (128, 256, 8, 3), (64, 256, 8, 4), (128, 64, 4, 4)):
                        cfg = K.GemmConfig(block_m=bm, block_n=bn, num_warps=warps, num_stages=st)
                        try:
                            sec = bench(lambda: K.fp8_gemm_w8a8(qx, sx, w, ws, config=cfg), quick=True)
                        except Exception as e:  # noqa: BLE001
                            print("sweep fail", cfg, repr(e)[:100])
                            continue
                        record("sweep w8a8 gemm-only", f"{name} M={m}", sec, flops=fl,
                               cfg=f"bm={bm} bn={bn} w={warps} st={st}")


def bench_moe(sweep: bool) -> None:
    w13 = rand_fp8(N_EXP, 2 * MOE_I, HID)
    w2 = rand_fp8(N_EXP, HID, MOE_I)
    s13 = rand_scales(N_EXP, 2 * MOE_I // 128, HID // 128)
    s2 = rand_scales(N_EXP, HID // 128, MOE_I // 128)
    per_expert_bytes = 3 * MOE_I * HID
    for t in (1, 8, 32, 128, 512, 4096):
        x = torch.randn(t, HID, device="cuda", dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(N_EXP, device="cuda")[:TOPK] for _ in range(t)]).to(torch.int32)
        wts = torch.softmax(torch.randn(t, TOPK, device="cuda"), -1)
        active = int(torch.unique(ids).numel())
        nbytes = active * per_expert_bytes + t * HID * 4
        fl = 2.0 * t * TOPK * 3 * MOE_I * HID
        if t <= 128:
            sec = bench_graph([lambda: K.fused_moe(x, w13, s13, w2, s2, ids, wts)])
        else:
            sec = bench(lambda: K.fused_moe(x, w13, s13, w2, s2, ids, wts))
        cfg = K.moe.default_moe_config(t, TOPK, N_EXP, True)
        record("fused_moe fp8", f"T={t} E=256 k=8 active={active}", sec, nbytes=nbytes, flops=fl,
               cfg=f"bm={cfg.block_m} bn1={cfg.block_n1} bn2={cfg.block_n2} w={cfg.num_warps}"
                   + (" unfused" if cfg.unfused_gate_up else ""))
        if sweep and t in (1, 8, 4096):
            cands = ((16, 64, 64, 4, 4), (16, 128, 128, 4, 3), (16, 64, 128, 4, 5), (16, 32, 64, 4, 4),
                     (16, 128, 128, 8, 4), (32, 64, 128, 4, 4))
            if t == 4096:
                cands = ((64, 64, 128, 4, 3), (64, 128, 128, 4, 3), (64, 64, 128, 4, 4), (128, 64, 128, 8, 3),
                         (128, 64, 256, 8, 3), (64, 64, 256, 4, 3))
            for bm, bn1, bn2, warps, st in cands:
                cfg = K.MoeConfig(bm, bn1, bn2, warps, st)
                try:
                    if t <= 128:
                        sec = bench_graph([lambda: K.fused_moe(x, w13, s13, w2, s2, ids, wts, cfg)], reps=5)
                    else:
                        sec = bench(lambda: K.fused_moe(x, w13, s13, w2, s2, ids, wts, cfg), quick=True)
                except Exception as e:  # noqa: BLE001
                    print("sweep fail", cfg, repr(e)[:100])
                    continue
                record("sweep fused_moe fp8", f"T={t}", sec, nbytes=nbytes, flops=fl,
                       cfg=f"bm={bm} bn1={bn1} bn2={bn2} w={warps} st={st}")
    # bf16 variant on 64 experts (memory), decode + prefill
    e = 64
    w13b = torch.randn(e, 2 * MOE_I, HID, device="cuda", dtype=torch.bfloat16) * 0.02
    w2b = torch.randn(e, HID, MOE_I, device="cuda", dtype=torch.bfloat16) * 0.02
    for t in (8, 4096):
        x = torch.randn(t, HID, device="cuda", dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(e, device="cuda")[:TOPK] for _ in range(t)]).to(torch.int32)
        wts = torch.softmax(torch.randn(t, TOPK, device="cuda"), -1)
        active = int(torch.unique(ids).numel())
        sec = bench(lambda: K.fused_moe(x, w13b, None, w2b, None, ids, wts))
        record("fused_moe bf16", f"T={t} E={e} k=8 active={active}", sec,
               nbytes=active * per_expert_bytes * 2, flops=2.0 * t * TOPK * 3 * MOE_I * HID,
               flop_ceil=BF16_CEIL)


def _mla_inputs(b: int, h: int, ctx: int, bs: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor,
                                                           torch.Tensor, torch.Tensor, int, float]:
    """Paged-cache copies (enough to defeat L2), a shuffled block table, lengths, latent and rope
    queries for B sequences of ``ctx`` tokens with H heads, plus the bytes and FLOPs of one call."""
    nblk = b * ctx // bs
    cache_bytes = b * ctx * (KVLORA + ROPE) * 2
    nc = _copies(cache_bytes, cap=8)
    caches = [torch.randn(nblk + 1, bs, KVLORA + ROPE, device="cuda", dtype=torch.bfloat16) for _ in range(nc)]
    bt = torch.randperm(nblk, device="cuda").view(b, ctx // bs)
    cl = torch.full((b,), ctx, device="cuda", dtype=torch.int32)
    qn = torch.randn(b, h, KVLORA, device="cuda", dtype=torch.bfloat16)
    qp = torch.randn(b, h, ROPE, device="cuda", dtype=torch.bfloat16)
    nbytes = cache_bytes + b * h * (KVLORA * 4 + ROPE * 2)
    flops = 2.0 * b * h * ctx * (KVLORA + ROPE + KVLORA)
    return caches, bt, cl, qn, qp, nbytes, flops


def bench_mla(sweep: bool) -> None:
    bs = 64
    for b, h, ctx in ((1, 16, 32768), (1, 16, 131072), (8, 16, 32768), (32, 16, 32768),
                      (1, 128, 32768), (8, 128, 32768), (64, 128, 4096)):
        caches, bt, cl, qn, qp, nbytes, fl = _mla_inputs(b, h, ctx, bs)
        nc = len(caches)

        def run(cfg: Any = None, reps: int = 20) -> float:
            fns = [(lambda c=c: K.mla_decode(qn, qp, c, bt, cl, 0.1, config=cfg)) for c in caches]
            return bench_graph(fns, reps=reps)

        sec = run()
        record("mla_decode", f"B={b} H={h} ctx={ctx}", sec, nbytes=nbytes, flops=fl, flop_ceil=BF16_CEIL,
               cfg=f"graph x{nc}")
        if sweep and ctx >= 32768 and b in (1, 8):
            grid = [(16, 32, 4, 2, False), (16, 32, 4, 3, False), (16, 64, 4, 3, True), (16, 64, 4, 2, True),
                    (16, 64, 8, 3, True), (16, 128, 4, 2, True), (16, 128, 8, 2, True)]
            if h > 16:
                grid += [(32, 64, 8, 2, False), (64, 32, 8, 2, False), (64, 64, 8, 1, False),
                         (32, 64, 4, 2, True), (32, 64, 8, 3, True), (64, 64, 8, 2, True)]
            for bh, bn, warps, st, tr in grid:
                for splits in (None, 16, 32, 64):
                    for pa in (True, False):
                        if not pa and (bh, bn, warps, st, tr) != grid[0]:
                            continue
                        cfg = K.MlaDecodeConfig(block_h=bh, block_n=bn, num_splits=splits, num_warps=warps,
                                                num_stages=st, page_aligned=pa, transposed=tr)
                        try:
                            sec = run(cfg, reps=5)
                        except Exception as e:  # noqa: BLE001
                            print("sweep fail", cfg, repr(e)[:100])
                            continue
                        record("sweep mla_decode", f"B={b} H={h} ctx={ctx}", sec, nbytes=nbytes, flops=fl,
                               flop_ceil=BF16_CEIL, cfg=f"bh={bh} bn={bn} w={warps} st={st} splits={splits} pa={pa} tr={tr}")


def sweep_focus() -> None:
    """Targeted sweep (MLA split counts with the vectorised merge; skinny warps)."""
    bs = 64
    for b, h, ctx, grid in (
        (1, 16, 32768, [(16, 64, 4, 2, True), (16, 32, 4, 3, False)]),
        (1, 16, 131072, [(16, 64, 4, 2, True)]),
        (8, 16, 32768, [(16, 64, 4, 2, True), (16, 32, 4, 3, False)]),
        (32, 16, 32768, [(16, 64, 4, 2, True)]),
        (1, 128, 32768, [(32, 64, 4, 2, True), (64, 32, 8, 2, False)]),
        (8, 128, 32768, [(64, 32, 8, 2, False), (32, 64, 4, 2, True)]),
    ):
        caches, bt, cl, qn, qp, nbytes, fl = _mla_inputs(b, h, ctx, bs)
        for bh, bn, warps, st, tr in grid:
            for splits in (None, 8, 16, 32, 64, 128):
                cfg = None if splits is None and (bh, bn, warps, st, tr) == grid[0] else K.MlaDecodeConfig(
                    block_h=bh, block_n=bn, num_splits=splits, num_warps=warps, num_stages=st, transposed=tr)
                if splits is None and cfg is not None:
                    continue
                fns = [(lambda c=c, cfg=cfg: K.mla_decode(qn, qp, c, bt, cl, 0.1, config=cfg)) for c in caches]
                try:
                    sec = bench_graph(fns, reps=7)
                except Exception as e:  # noqa: BLE001
                    print("sweep fail", cfg, repr(e)[:100])
                    continue
                record("sweep2 mla_decode", f"B={b} H={h} ctx={ctx}", sec, nbytes=nbytes, flops=fl,
                       flop_ceil=BF16_CEIL, cfg="default" if cfg is None else
                       f"bh={bh} bn={bn} w={warps} st={st} splits={splits} tr={tr}")
    for name in ("wq_a", "wkv_a", "wo", "dense_w13"):
        n, k = LINEARS[name]
        nc = _copies(n * k)
        ws_list = [(rand_fp8(n, k), rand_scales(math.ceil(n / 128), math.ceil(k / 128))) for _ in range(nc)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        dflt = K.fp8_gemm.default_skinny_config(1, n, k, x.device)
        for bn, warps, st in ((64, 4, 4), (64, 2, 4), (64, 2, 6), (32, 2, 4), (128, 4, 3), (64, 4, 8)):
            for split in (dflt.split_k, 2 * dflt.split_k):
                c = K.SkinnyConfig(block_n=bn, split_k=split, num_warps=warps, num_stages=st)
                fns = [(lambda w=w, ws=ws, c=c: K.fp8_gemm_w8a16_skinny(x, w, ws, c)) for w, ws in ws_list]
                try:
                    sec = bench_graph(fns, reps=7)
                except Exception as e:  # noqa: BLE001
                    print("sweep fail", c, repr(e)[:100])
                    continue
                record("sweep2 skinny", f"{name} M=1", sec, nbytes=_linear_bytes(1, n, k),
                       cfg=f"bn={bn} split={split} w={warps} st={st}")


# ----------------------------------------------------------------------------------------
# Decode launch-config tuning (--only gemm_tune mla_tune): the grids behind the default
# tables in kernels/fp8_gemm.py and kernels/mla_decode.py.

SMS = 132  # H200 multiprocessors; the grids aim at whole waves of programs on them
# The GEMMs of one W3 decode step: (N, K, how many a 3-layer step runs). Per layer
# (engine/model/mla.py) q_a, kv_a (q_b after the q_a norm), o_proj; the dense first layer's MLP
# (engine/model/moe.py MLP) runs gate and up as two GEMMs, then down. The last three are not in
# a one-GPU step (count 0): tensor-parallel shards and an MLP of the MoE's size, to check
# the fallback rule on shapes outside the table.
DECODE_GEMMS: dict[str, tuple[int, int, int]] = {
    "q_a": (QLORA, HID, 3),
    "kv_a": (KVLORA + ROPE, HID, 3),
    "q_b": (HEADS * (NOPE + ROPE), QLORA, 3),
    "o_proj": (HID, HEADS * VDIM, 3),
    "gate|up": (DENSE_I, HID, 2),
    "down": (HID, DENSE_I, 1),
    "q_b/tp2": (HEADS * (NOPE + ROPE) // 2, QLORA, 0),
    "o_proj/tp2": (HID, HEADS * VDIM // 2, 0),
    "shared_w13": (2 * MOE_I, HID, 0),
}
TUNE_M = (1, 32, 8)  # batch rows, most important first (the sweep stops at --deadline-s)
MLA_TUNE_CELLS = [(b, h, ctx) for h in (16, 128) for ctx in (32768, 65536, 131072) for b in (1, 8, 32)]
DEADLINE = math.inf  # wall clock (time.time()) after which grids stop early
VERIFIED: set[str] | None = None  # after precompile: the jobs a worker ran cleanly (others are skipped)
SAVE: list[Callable[[], None]] = []  # main()'s JSON writer, for sections that save per cell


def _save() -> None:
    for f in SAVE:
        f()


def _eff_split(k: int, split: int) -> int:
    kb = math.ceil(k / 128)
    return math.ceil(kb / math.ceil(kb / max(1, split)))


def _wave_splits(tiles: int, kb: int) -> list[int]:
    """Distinct effective split counts giving about 1, 2, 4 and 8 waves of programs."""
    out = set()
    for waves in (1, 2, 4, 8):
        s = min(kb, max(1, round(waves * SMS / tiles)))
        out.add(math.ceil(kb / math.ceil(kb / s)))
    return sorted(out)


def gemm_tune_grid(m: int, n: int, k: int) -> list[Any]:
    """block_n x split x num_warps x num_stages, one-launch split-K (the two-launch twin of
    the winner is timed after the grid)."""
    kb = math.ceil(k / 128)
    block_m = min(64, max(16, 1 << (m - 1).bit_length()))
    grid = []
    for bn in (32, 64, 128):
        for split in _wave_splits(math.ceil(n / bn) * math.ceil(m / block_m), kb):
            grid += [K.SkinnyConfig(block_n=bn, split_k=split, num_warps=w, num_stages=st, fused_reduce=True)
                     for w in (2, 4, 8) for st in (2, 3, 4, 5, 6)]
    return grid


def _gemm_label(c: Any, k: int) -> str:
    split = _eff_split(k, c.split_k)
    red = "" if split == 1 else " fused" if c.fused_reduce else " 2-launch"
    return f"bn={c.block_n} split={split} w={c.num_warps} st={c.num_stages}" + (" swap" if c.swap_ab else "") + red


def _gemm_compile_key(m: int, k: int, c: Any) -> tuple[Any, ...]:
    """What selects a compiled kernel (the shapes here are all multiples of 16, so Triton
    specialises them alike; M and loop bounds are not specialised)."""
    split = _eff_split(k, c.split_k)
    mode = 0 if split == 1 else 2 if c.fused_reduce else 1
    block_m = min(64, max(16, 1 << (m - 1).bit_length()))
    return ("gemm", c.block_n, c.num_warps, c.num_stages, c.swap_ab, block_m, mode)


def gemm_tune_jobs(sweep: bool) -> list[tuple[str, int, Any]]:
    jobs = []
    for m in TUNE_M:
        for name, (n, k, _) in DECODE_GEMMS.items():
            jobs.append((name, m, K.fp8_gemm.default_skinny_config(m, n, k, torch.device("cuda"))))
            jobs += [(name, m, c) for c in gemm_tune_grid(m, n, k)] if sweep else []
    return jobs


def mla_tune_grid(b: int, h: int, ctx: int) -> list[Any]:
    """block_h x block_n x num_warps x num_stages x orientation, each with the heuristic's
    split count (num_splits=None) and with splits giving about 1, 2 (and 4) waves.

    Left out after a first sweep: block_n = 128 (over the 227 KB of shared memory from 2
    stages on) and num_stages = 1 (transposed tiles with 1 stage faulted with an illegal
    address on the H200, Triton 3.6; unpipelined loads are slower anyway)."""
    if h <= 16:
        shapes = [(16, bn, w, st, tr) for bn in (32, 64) for w in (4, 8) for st in (2, 3, 4) for tr in (True, False)]
        waves: tuple[int, ...] = (1, 2, 4)
    else:
        shapes = [(bh, bn, w, st, tr) for bh in (32, 64) for bn in (32, 64) for w in (4, 8) for st in (2, 3)
                  for tr in (True, False)]
        waves = (1, 2)
    grid = []
    for bh, bn, w, st, tr in shapes:
        rows = b * math.ceil(h / bh)
        splits = sorted({min(256, ctx // 128, max(1, round(wv * SMS / rows))) for wv in waves})
        grid += [K.MlaDecodeConfig(block_h=bh, block_n=bn, num_splits=sp, num_warps=w, num_stages=st,
                                   transposed=tr) for sp in [None, *splits]]
    return grid


def _mla_splits(b: int, h: int, ctx: int, c: Any) -> int:
    return K.mla_decode_module.split_plan(b, h, ctx, c, torch.device("cuda"))[0]


def _mla_label(b: int, h: int, ctx: int, c: Any) -> str:
    return (f"bh={c.block_h} bn={c.block_n} w={c.num_warps} st={c.num_stages} tr={c.transposed} "
            f"splits={_mla_splits(b, h, ctx, c)}{'' if c.num_splits else ' (heuristic)'}")


def _mla_compile_key(c: Any) -> tuple[Any, ...]:
    """The split kernel's compile key (the split count is not specialised; the few merge
    kernels, one per power-of-two split tile, are cheap to compile in every worker)."""
    return ("mla", c.block_h, c.block_n, c.num_warps, c.num_stages, c.transposed)


def mla_tune_jobs(sweep: bool) -> list[tuple[tuple[int, int, int], Any]]:
    jobs = []
    for cell in MLA_TUNE_CELLS:
        jobs.append((cell, K.default_mla_config(cell[0], cell[1])))
        jobs += [(cell, c) for c in mla_tune_grid(*cell)] if sweep else []
    return jobs


def _job_id(kind: str, cell: Any, label: str) -> str:
    return f"{kind}|{cell}|{label}"


def _shard(key: tuple[Any, ...], n: int) -> int:
    return zlib.crc32(repr(key).encode()) % n  # stable across processes, unlike hash()


def precompile_shard(sections: list[str], sweep: bool, shard: int, nshards: int, out: Path) -> None:
    """Worker process: launch once every tuning job whose kernel falls in this shard, so
    Triton's on-disk cache holds it before the timed pass (jobs of one compiled kernel go
    to one worker; the timing process then only loads them). The jobs that ran cleanly
    are written to ``out``; the timing process runs nothing else, since a kernel that
    faults leaves the CUDA context unusable. After the first failure this worker stops
    (its context may be gone)."""
    ok: list[str] = []

    def attempt(jid: str, fn: Callable[[], Any]) -> bool:
        try:
            fn()
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001
            print(f"precompile: {jid} failed: {repr(e)[:200]}", flush=True)
            return False
        ok.append(jid)
        out.write_text(json.dumps(ok))
        return True

    def gemm_jobs() -> bool:
        weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, m, c in gemm_tune_jobs(sweep):
            n, k, _ = DECODE_GEMMS[name]
            if _shard(_gemm_compile_key(m, k, c), nshards) != shard:
                continue
            if name not in weights:
                weights[name] = (rand_fp8(n, k), rand_scales(math.ceil(n / 128), math.ceil(k / 128)))
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            if not attempt(_job_id("gemm", (name, m), _gemm_label(c, k)),
                           lambda x=x, w=weights[name], c=c: K.fp8_gemm_w8a16_skinny(x, *w, c)):
                return False
        return True

    def mla_jobs() -> None:
        nblk = 256  # a small cache behind full-size block tables: same strides, same kernels
        cache = torch.randn(nblk, 64, KVLORA + ROPE, device="cuda", dtype=torch.bfloat16)
        for (b, h, ctx), c in mla_tune_jobs(sweep):
            if _shard(_mla_compile_key(c), nshards) != shard:
                continue
            bt = torch.randint(0, nblk, (b, ctx // 64), device="cuda")
            cl = torch.full((b,), ctx, device="cuda", dtype=torch.int32)
            qn = torch.randn(b, h, KVLORA, device="cuda", dtype=torch.bfloat16)
            qp = torch.randn(b, h, ROPE, device="cuda", dtype=torch.bfloat16)
            if not attempt(_job_id("mla", (b, h, ctx), _mla_label(b, h, ctx, c)),
                           lambda qn=qn, qp=qp, bt=bt, cl=cl, c=c: K.mla_decode(qn, qp, cache, bt, cl, 0.1, config=c)):
                return

    out.write_text("[]")
    if ("gemm_tune" not in sections or gemm_jobs()) and "mla_tune" in sections:
        mla_jobs()


def precompile(sections: list[str], sweep: bool, workers: int, timeout_s: float) -> None:
    """Compile the tuning jobs in ``workers`` processes at once (a few hundred kernels at
    ~1 s each would take minutes in one process), then collect the jobs that ran."""
    global VERIFIED
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp())
    procs = [subprocess.Popen([sys.executable, __file__, "--only", *sections, "--tune-shard", f"{i}/{workers}",
                               "--out", str(tmp / f"shard{i}.json")] + (["--sweep"] if sweep else []))
             for i in range(workers)]
    for p in procs:
        try:
            p.wait(timeout=max(1.0, timeout_s - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    VERIFIED = set()
    for i in range(workers):
        f = tmp / f"shard{i}.json"
        if f.exists():
            VERIFIED.update(json.loads(f.read_text()))
    print(f"precompile: {workers} workers, {time.time() - t0:.1f} s, {len(VERIFIED)} jobs ran", flush=True)
    ROWS.append({"kernel": "precompile", "shape": "", "us": 0.0, "wall_s": time.time() - t0,
                 "verified_jobs": len(VERIFIED)})


def _runnable(jid: str) -> bool:
    return VERIFIED is None or jid in VERIFIED


def _time_grid(cands: list[tuple[str, Any]], timer: Callable[[Any, int], float], reps: int,
               on_row: Callable[[str, Any, float], None]) -> list[tuple[float, str, Any]]:
    """Time each (label, config) once; stop at DEADLINE. Returns (seconds, label, config)."""
    done = []
    for label, c in cands:
        if time.time() > DEADLINE:
            print(f"deadline: {len(cands) - len(done)} configs left untimed", flush=True)
            break
        try:
            sec = timer(c, reps)
        except Exception as e:  # noqa: BLE001
            print("tune fail", label, repr(e)[:120], flush=True)
            continue
        on_row(label, c, sec)
        done.append((sec, label, c))
    return done


def tune_gemm(sweep: bool) -> None:
    """Each decode GEMM at each M: the default config (and cuBLAS where it applies); with
    ``sweep`` also the grid, the three fastest re-timed, the winner's two-launch twin."""
    for m in TUNE_M:
        for name, (n, k, count) in DECODE_GEMMS.items():
            _tune_gemm_cell(name, n, k, count, m, sweep)
            torch.cuda.empty_cache()
            _save()


def _tune_gemm_cell(name: str, n: int, k: int, count: int, m: int, sweep: bool) -> None:
    nc = _copies(n * k)
    ws_list = [(rand_fp8(n, k), rand_scales(math.ceil(n / 128), math.ceil(k / 128))) for _ in range(nc)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    nbytes = _linear_bytes(m, n, k)
    shape = f"{name} M={m} N={n} K={k}"
    info = {"name": name, "m": m, "n": n, "k": k, "per_step": count, "copies": nc}
    ref = x.double() @ K.dequant_block_fp8_weight(*ws_list[0]).double().t()

    def timer(c: Any, reps: int) -> float:
        return bench_graph([(lambda w=w, ws=ws: K.fp8_gemm_w8a16_skinny(x, w, ws, c)) for w, ws in ws_list], reps)

    def row(kind: str, label: str, c: Any, sec: float, **extra: Any) -> None:
        record(kind, shape, sec, nbytes=nbytes, cfg=label, config=dataclasses.asdict(c), **info, **extra)

    dflt = K.fp8_gemm.default_skinny_config(m, n, k, x.device)
    if _runnable(_job_id("gemm", (name, m), _gemm_label(dflt, k))):
        sec = timer(dflt, 20)  # then checked: after many replays, so the split counters reset
        err = rel(K.fp8_gemm_w8a16_skinny(x, *ws_list[0], dflt), ref)
        check(f"tune default {shape} {_gemm_label(dflt, k)}", err, 8e-3)
        row("tune gemm default", _gemm_label(dflt, k), dflt, sec, rel_err=err)
    auto_skinny = not (m >= K.fp8_gemm.SCALED_MM_MIN_M and n * k >= K.fp8_gemm.SCALED_MM_MIN_WEIGHT_BYTES
                       and K.scaled_mm_is_safe(m, n, k))
    if m >= 8 and K.scaled_mm_is_safe(m, n, k):
        sec = bench_graph([(lambda w=w, ws=ws: K.fp8_linear(x, w, ws, backend="scaled_mm")) for w, ws in ws_list], 20)
        record("tune gemm scaled_mm", shape, sec, nbytes=nbytes, cfg="cuBLAS" + ("" if auto_skinny else " [auto]"),
               **info)
    if not sweep:
        return
    cands = [(_gemm_label(c, k), c) for c in gemm_tune_grid(m, n, k)]
    cands = [(lb, c) for lb, c in cands if _runnable(_job_id("gemm", (name, m), lb))]
    done = _time_grid(cands, timer, 10, lambda lb, c, sec: row("tune gemm", lb, c, sec))
    if not done:
        return
    # re-time the three fastest (winner's curse), keep the best; then its two-launch twin
    top = [(timer(c, 20), lb, c) for _, lb, c in sorted(done, key=lambda t: t[0])[:3]]
    sec, lb, best = min(top, key=lambda t: t[0])
    err = rel(K.fp8_gemm_w8a16_skinny(x, *ws_list[0], best), ref)
    check(f"tune best {shape} {lb}", err, 8e-3)
    row("tune gemm best", lb, best, sec, rel_err=err)
    for c in (best, dflt):
        if _eff_split(k, c.split_k) > 1:
            twin = dataclasses.replace(c, fused_reduce=not c.fused_reduce)
            try:
                sec = timer(twin, 20)
            except Exception as e:  # noqa: BLE001
                print("tune fail", _gemm_label(twin, k), repr(e)[:120], flush=True)
                continue
            err = rel(K.fp8_gemm_w8a16_skinny(x, *ws_list[0], twin), ref)
            check(f"tune twin {shape} {_gemm_label(twin, k)}", err, 8e-3)
            row("tune gemm twin", _gemm_label(twin, k), twin, sec, twin_of=_gemm_label(c, k), rel_err=err)


def tune_mla(sweep: bool) -> None:
    """Each MLA decode cell: the default config; with ``sweep`` also the grid, the three
    fastest re-timed and the best checked against the fp32 reference."""
    for b, h, ctx in MLA_TUNE_CELLS:
        _tune_mla_cell(b, h, ctx, sweep)
        torch.cuda.empty_cache()
        _save()


def _tune_mla_cell(b: int, h: int, ctx: int, sweep: bool) -> None:
    caches, bt, cl, qn, qp, nbytes, fl = _mla_inputs(b, h, ctx, 64)
    shape = f"B={b} H={h} ctx={ctx}"
    info = {"b": b, "h": h, "ctx": ctx, "copies": len(caches)}

    def timer(c: Any, reps: int) -> float:
        return bench_graph([(lambda cc=cc: K.mla_decode(qn, qp, cc, bt, cl, 0.1, config=c)) for cc in caches], reps)

    def row(kind: str, label: str, c: Any, sec: float, **extra: Any) -> None:
        record(kind, shape, sec, nbytes=nbytes, flops=fl, flop_ceil=BF16_CEIL, cfg=label,
               config=dataclasses.asdict(c), **info, **extra)

    ref = K.mla_decode_torch(qn, qp, caches[0], bt, cl, 0.1)
    dflt = K.default_mla_config(b, h)
    if _runnable(_job_id("mla", (b, h, ctx), _mla_label(b, h, ctx, dflt))):
        sec = timer(dflt, 10)
        err = rel(K.mla_decode(qn, qp, caches[0], bt, cl, 0.1), ref)
        check(f"tune default mla {shape} {_mla_label(b, h, ctx, dflt)}", err, 1e-2)
        row("tune mla default", _mla_label(b, h, ctx, dflt), dflt, sec, rel_err=err)
    if not sweep:
        return
    cands = [(_mla_label(b, h, ctx, c), c) for c in mla_tune_grid(b, h, ctx)]
    cands = [(lb, c) for lb, c in cands if _runnable(_job_id("mla", (b, h, ctx), lb))]
    done = _time_grid(cands, timer, 5 if h <= 16 else 3, lambda lb, c, sec: row("tune mla", lb, c, sec))
    if not done:
        return
    top = [(timer(c, 10), lb, c) for _, lb, c in sorted(done, key=lambda t: t[0])[:3]]
    sec, lb, best = min(top, key=lambda t: t[0])
    err = rel(K.mla_decode(qn, qp, caches[0], bt, cl, 0.1, config=best), ref)
    check(f"tune best mla {shape} {lb}", err, 1e-2)
    row("tune mla best", lb, best, sec, rel_err=err)


def bench_moe_prefill() -> None:
    """Prefill-sized MoE (FP8): fused vs unfused gate/up, tile shapes and program grouping
    (group_m), with a per-kernel profile at one 16K-token chunk."""
    from torch.profiler import ProfilerActivity, profile

    w13 = rand_fp8(N_EXP, 2 * MOE_I, HID)
    w2 = rand_fp8(N_EXP, HID, MOE_I)
    s13 = rand_scales(N_EXP, 2 * MOE_I // 128, HID // 128)
    s2 = rand_scales(N_EXP, HID // 128, MOE_I // 128)
    unf = functools.partial(K.MoeConfig, unfused_gate_up=True)
    cands: list[tuple[str, Any]] = [
        ("default", None),
        ("unf 64x128 w4 st4 g0", unf(64, 128, 128, 4, 4)),
        ("unf 64x128 w4 st4 g4", unf(64, 128, 128, 4, 4, group_m=4)),
        ("unf 64x128 w4 st4 g8", unf(64, 128, 128, 4, 4, group_m=8)),
        ("unf 64x128 w4 st4 g16", unf(64, 128, 128, 4, 4, group_m=16)),
        ("unf 64x128 w4 st4 g32", unf(64, 128, 128, 4, 4, group_m=32)),
        ("unf 128x128 w8 st3 g0", unf(128, 128, 128, 8, 3)),
        ("unf 128x128 w8 st3 g4", unf(128, 128, 128, 8, 3, group_m=4)),
        ("unf 128x128 w8 st3 g8", unf(128, 128, 128, 8, 3, group_m=8)),
        ("unf 128x128 w8 st4 g8", unf(128, 128, 128, 8, 4, group_m=8)),
        ("unf 64x128 w8 st4 g8", unf(64, 128, 128, 8, 4, group_m=8)),
        ("fused 64x128 w4 st4 g8", K.MoeConfig(64, 128, 128, 4, 4, group_m=8)),
    ]
    for t in (1024, 4096, 16384):  # 16384: one chunk of the engine's GPU prefill budget
        x = torch.randn(t, HID, device="cuda", dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(N_EXP, device="cuda")[:TOPK] for _ in range(t)]).to(torch.int32)
        wts = torch.softmax(torch.randn(t, TOPK, device="cuda"), -1)
        fl = 2.0 * t * TOPK * 3 * MOE_I * HID
        for name, cfg in cands:
            try:
                sec = bench(lambda: K.fused_moe(x, w13, s13, w2, s2, ids, wts, cfg), quick=True)
            except Exception as e:  # noqa: BLE001
                print("moe_prefill fail", name, repr(e)[:120])
                continue
            record("moe_prefill fp8", f"T={t}", sec, flops=fl, cfg=name)
        if t == 16384:
            for name, cfg in (cands[1], cands[3], cands[8]):
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    K.fused_moe(x, w13, s13, w2, s2, ids, wts, cfg)
                    torch.cuda.synchronize()
                print(f"--- profile moe T={t} {name} ---")
                for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:6]:
                    print(f"  {ev.key[:60]:<60} {ev.device_time_total:9.1f} us")
                    ROWS.append({"kernel": "profile", "shape": f"moe T=4096 {name}", "op": ev.key[:120],
                                 "us": ev.device_time_total})


def bench_prefill_attention(sweep: bool) -> None:
    """W3 prefill attention (128 heads, one 16K-query chunk at the end of 16K / 64K / 128K keys):
    bf16 cuDNN (the engine's default) against the FP8 Triton kernel, its share spent in the
    scale / quantization passes, and its error against float64 at a size that fits."""
    from torch.profiler import ProfilerActivity, profile

    from dseval.kernels import mla_prefill as mp
    from dseval.kernels.mla_prefill_fp8 import Fp8AttentionConfig, mla_prefill_attention_fp8

    g = torch.Generator(device="cuda").manual_seed(0)

    def inputs(t: int, s: int) -> tuple[torch.Tensor, ...]:
        def r(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)
        return r(t, HEADS, NOPE), r(t, HEADS, ROPE), r(s, HEADS, NOPE), r(s, ROPE), r(s, HEADS, VDIM)

    small = inputs(512, 2048)
    exact = mp.mla_prefill_attention_torch(*(x.double() for x in small), 0.1)
    check("prefill attention fp8 vs float64 (t=512 S=2048)", rel(mla_prefill_attention_fp8(*small, 0.1), exact), 8e-2)
    cudnn = mp.resolve_prefill_attention("split_cudnn", torch.device("cuda"), torch.bfloat16, NOPE, ROPE, VDIM)
    check("prefill attention cudnn vs float64 (t=512 S=2048)", rel(mp.mla_prefill_attention(*small, 0.1, cudnn), exact),
          1e-2)
    # offsets of the transposed values (head x 128 x S) pass 2^31 beyond 128K rows at 128 heads
    far = inputs(512, 139264)
    check("prefill attention fp8 vs cudnn past 2^31 offsets (t=512 S=139264)",
          rel(mla_prefill_attention_fp8(*far, 0.1), mp.mla_prefill_attention(*far, 0.1, cudnn)), 8e-2)
    del small, exact, far
    cands = [Fp8AttentionConfig()]
    if sweep:  # at the 128K shape only
        cands += [Fp8AttentionConfig(bm, bn, w, st) for bm, bn, w, st in (
            (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 3),
            (64, 64, 4, 4))]
    t = 16384
    for s in (16384, 65536, 131072):
        args = inputs(t, s)
        fl = HEADS * (NOPE + ROPE + VDIM) * 2 * (t * (s - t) + t * t / 2)
        shape = f"t={t} S={s} H={HEADS}"
        ref = mp.mla_prefill_attention(*args, 0.1, cudnn)
        record("prefill attn cudnn bf16", shape, bench(lambda: mp.mla_prefill_attention(*args, 0.1, cudnn), quick=True),
               flops=fl, flop_ceil=BF16_CEIL)
        for i, c in enumerate(cands if s == 131072 else cands[:1]):
            try:
                err = rel(mla_prefill_attention_fp8(*args, 0.1, config=c), ref)
                sec = bench(lambda c=c: mla_prefill_attention_fp8(*args, 0.1, config=c), quick=True)
            except Exception as e:  # noqa: BLE001 (a config may not fit shared memory)
                print("prefill fp8 fail", c, repr(e)[:100])
                continue
            record("prefill attn fp8" if i == 0 else "sweep prefill attn fp8", shape, sec, flops=fl,
                   cfg=f"bm={c.block_m} bn={c.block_n} w={c.num_warps} st={c.num_stages}", rel_vs_cudnn=err)
        if s == 131072:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                mla_prefill_attention_fp8(*args, 0.1)
                torch.cuda.synchronize()
            for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:6]:
                print(f"  {ev.key[:60]:<60} {ev.device_time_total:9.1f} us")
                ROWS.append({"kernel": "profile", "shape": f"prefill fp8 {shape}", "op": ev.key[:120],
                             "us": ev.device_time_total})
        del args, ref
        torch.cuda.empty_cache()


def profile_kernels() -> None:
    """torch.profiler per-kernel GPU times for the decode cases (separates GPU time from
    launch overhead)."""
    from torch.profiler import ProfilerActivity, profile

    cases: list[tuple[str, Callable[[], Any]]] = []
    w13 = rand_fp8(N_EXP, 2 * MOE_I, HID)
    w2 = rand_fp8(N_EXP, HID, MOE_I)
    s13 = rand_scales(N_EXP, 2 * MOE_I // 128, HID // 128)
    s2 = rand_scales(N_EXP, HID // 128, MOE_I // 128)
    for t in (1, 8):
        x = torch.randn(t, HID, device="cuda", dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(N_EXP, device="cuda")[:TOPK] for _ in range(t)]).to(torch.int32)
        wts = torch.softmax(torch.randn(t, TOPK, device="cuda"), -1)
        cases.append((f"moe T={t}", lambda x=x, ids=ids, wts=wts: K.fused_moe(x, w13, s13, w2, s2, ids, wts)))
    n, k = LINEARS["wo"]
    w, ws = rand_fp8(n, k), rand_scales(n // 128, k // 128)
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
        for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]:
            print(f"  {ev.key[:70]:<70} {ev.device_time_total / 5:9.1f} us/call  x{ev.count // 5}")
            ROWS.append({"kernel": "profile", "shape": name, "op": ev.key[:120],
                         "us": ev.device_time_total / 5, "count": ev.count // 5})


SECTIONS = {
    "quant": lambda sw: bench_quant(),
    "norm": lambda sw: bench_norm(),
    "rope": lambda sw: bench_rope(),
    "mla": bench_mla,
    "gemm_decode": bench_gemm_decode,
    "moe": bench_moe,
    "gemm_prefill": bench_gemm_prefill,
    "profile": lambda sw: profile_kernels(),
    "focus": lambda sw: sweep_focus(),
    "moe_prefill": lambda sw: bench_moe_prefill(),
    "prefill_attn": bench_prefill_attention,
    "gemm_tune": tune_gemm,
    "mla_tune": tune_mla,
}
TUNE_SECTIONS = ("gemm_tune", "mla_tune")  # not in the default run: minutes of grids
TUNE_SUMMARY = ("tune gemm default", "tune gemm scaled_mm", "tune gemm best", "tune gemm twin", "tune mla default",
                "tune mla best")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "kernels.json"))
    ap.add_argument("--only", nargs="*", choices=list(SECTIONS), help="sections to run (default all)")
    ap.add_argument("--check", action="store_true", help="correctness checks at real sizes first")
    ap.add_argument("--no-bench", action="store_true", help="only run --check")
    ap.add_argument("--sweep", action="store_true", help="also sweep launch configs (slow)")
    ap.add_argument("--tune-workers", type=int, default=0,
                    help="gemm_tune/mla_tune: compile their grids in this many processes first")
    ap.add_argument("--tune-shard", default=None, help=argparse.SUPPRESS)  # "I/N": one precompile worker
    ap.add_argument("--deadline-s", type=float, default=math.inf,
                    help="stop tuning grids this many seconds after the start (JSON keeps what ran)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py needs a CUDA GPU")
    global DEADLINE
    DEADLINE = time.time() + args.deadline_s
    if args.tune_shard:
        i, n = map(int, args.tune_shard.split("/"))
        precompile_shard(args.only or [], args.sweep, i, n, Path(args.out))
        return
    props = torch.cuda.get_device_properties(0)
    t0 = time.time()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a timeout still leaves results
        meta = {
            "device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": __import__("triton").__version__,
            "ceilings": {"bw": BW_CEIL, "fp8": FP8_CEIL, "bf16": BF16_CEIL},
            "wall_s": time.time() - t0, "argv": sys.argv[1:],
        }
        out.write_text(json.dumps({"meta": meta, "checks": CHECKS, "rows": ROWS}, indent=1))

    SAVE.append(save)
    tune = [s for s in args.only or [] if s in TUNE_SECTIONS]
    if tune and args.tune_workers > 0:
        precompile(tune, args.sweep, args.tune_workers, timeout_s=min(600.0, max(30.0, (DEADLINE - time.time()) / 2)))
    if args.check:
        try:
            run_checks()
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            CHECKS.append({"check": "run_checks crashed", "error": repr(e)[:500], "ok": False})
        save()
    if not args.no_bench:
        for name in args.only or [s for s in SECTIONS if s not in TUNE_SECTIONS]:
            try:
                SECTIONS[name](args.sweep)
            except Exception as e:  # noqa: BLE001 - keep going, record the failure
                import traceback

                traceback.print_exc()
                print(f"SECTION {name} failed: {e!r}", flush=True)
                ROWS.append({"kernel": name, "error": repr(e)[:500]})
            torch.cuda.empty_cache()
            save()
    save()
    print("\n=== summary ===")
    for r in ROWS:
        if "error" in r:
            print(f"{r['kernel']:<22} ERROR {r['error'][:150]}")
        elif not r["kernel"].startswith(("sweep", "tune", "precompile")) or r["kernel"] in TUNE_SUMMARY:
            print(fmt_row(r))
    bad = [c for c in CHECKS if not c.get("ok", True) and not c.get("info")]
    print(f"checks: {len(CHECKS)} run, {len(bad)} failed; wrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
