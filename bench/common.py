"""What the kernel scripts share: the kernel namespace, W3 shapes, random FP8 inputs, the two
timers, and the rows/checks that every script writes as one JSON.

The scripts run on the device machine from a bare checkout (nothing installed), so the repo
root goes on the import path before ``dseval.kernels`` is imported.

Timing: decode-sized ops are captured in a CUDA graph (as the engine runs decode) over enough
copies of the weights or cache (> 3x the 60 MB L2) that every call reads HBM, and the time is
the median replay divided by the copies. Prefill-sized ops use ``triton.testing.do_bench``
(median, L2 flushed before each repetition), whose host launch cost is negligible at those sizes.
Bytes count every input read once and every output written once; the ceilings are the
measured H200 copy rate and tensor-core peaks, so each row reads as a share of the hardware.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from triton.testing import do_bench

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a checkout imports without an install (the device machine has none)
from dseval.kernels import fp8_gemm, fp8_quant, mla_decode, mla_prefill, mla_rope, moe, norm, router  # noqa: E402

# One namespace over the kernel modules: K.<function> and K.<module>.<name>.
K = SimpleNamespace(**{name: getattr(mod, name) for mod in (fp8_quant, fp8_gemm, mla_decode, mla_prefill, mla_rope,
                                                            moe, norm, router) for name in getattr(mod, "__all__", ())},
                    fp8_gemm=fp8_gemm, fp8_quant=fp8_quant, moe=moe, mla_decode_module=mla_decode)

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

ROWS: list[dict[str, Any]] = []
CHECKS: list[dict[str, Any]] = []


def require_gpu(script: str) -> None:
    if not torch.cuda.is_available():
        sys.exit(f"{script} needs a CUDA GPU")


def rand_fp8(*shape: int, device: str = "cuda") -> torch.Tensor:
    """Random finite e4m3 codes without a float32 temporary (random sign, |v| <= 416)."""
    mag = torch.randint(0, 0x7E, shape, dtype=torch.uint8, device=device)
    sign = torch.randint(0, 2, shape, dtype=torch.uint8, device=device) << 7
    return (mag | sign).view(torch.float8_e4m3fn)


def rand_scales(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, device="cuda") * 2e-4 + 1e-4


def rand_linear(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An FP8 weight [N, K] and its 128x128 block scales."""
    return rand_fp8(n, k), rand_scales(math.ceil(n / 128), math.ceil(k / 128))


def moe_fp8_weights(s2_gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All 256 V3 experts in FP8: (w13, s13, w2, s2), the order ``fused_moe`` takes them."""
    w13 = rand_fp8(N_EXP, 2 * MOE_I, HID)
    w2 = rand_fp8(N_EXP, HID, MOE_I)
    s13 = rand_scales(N_EXP, 2 * MOE_I // 128, HID // 128)
    s2 = rand_scales(N_EXP, HID // 128, MOE_I // 128) * s2_gain
    return w13, s13, w2, s2


def routed_tokens(t: int, experts: int = N_EXP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T tokens, each sent to TOPK distinct experts with softmax weights: (x, ids, weights)."""
    x = torch.randn(t, HID, device="cuda", dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(experts, device="cuda")[:TOPK] for _ in range(t)]).to(torch.int32)
    return x, ids, torch.softmax(torch.randn(t, TOPK, device="cuda"), -1)


def moe_flops(t: int) -> float:
    return 2.0 * t * TOPK * 3 * MOE_I * HID


def bench(fn: Callable[[], Any], quick: bool = False) -> float:
    """Median seconds (quick: fewer repetitions, for config sweeps)."""
    if quick:
        return do_bench(fn, warmup=5, rep=25, return_mode="median") * 1e-3
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3


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


def copies(nbytes: float, cap: int = 24) -> int:
    """Operand copies a graph cycles through so that their total (~200 MB) defeats the L2."""
    return max(1, min(cap, math.ceil(200e6 / max(nbytes, 1))))


def linear_bytes(m: int, n: int, k: int) -> float:
    return n * k + math.ceil(n / 128) * math.ceil(k / 128) * 4 + m * k * 2 + m * n * 2


def mla_inputs(b: int, h: int, ctx: int, bs: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor,
                                                           torch.Tensor, torch.Tensor, int, float]:
    """Paged-cache copies (enough to defeat L2), a shuffled block table, lengths, latent and rope
    queries for B sequences of ``ctx`` tokens with H heads, plus the bytes and FLOPs of one call."""
    nblk = b * ctx // bs
    cache_bytes = b * ctx * (KVLORA + ROPE) * 2
    nc = copies(cache_bytes, cap=8)
    caches = [torch.randn(nblk + 1, bs, KVLORA + ROPE, device="cuda", dtype=torch.bfloat16) for _ in range(nc)]
    bt = torch.randperm(nblk, device="cuda").view(b, ctx // bs)
    cl = torch.full((b,), ctx, device="cuda", dtype=torch.int32)
    qn = torch.randn(b, h, KVLORA, device="cuda", dtype=torch.bfloat16)
    qp = torch.randn(b, h, ROPE, device="cuda", dtype=torch.bfloat16)
    nbytes = cache_bytes + b * h * (KVLORA * 4 + ROPE * 2)
    flops = 2.0 * b * h * ctx * (KVLORA + ROPE + KVLORA)
    return caches, bt, cl, qn, qp, nbytes, flops


def cudnn_prefill_attention() -> Any:
    """The engine's cuDNN prefill attention at W3's head sizes (v unpadded where cuDNN takes it)."""
    from dseval.kernels.mla_prefill import resolve_prefill_attention

    return resolve_prefill_attention("split_cudnn", torch.device("cuda"), torch.bfloat16, NOPE, ROPE, VDIM)


def prefill_attention_inputs(g: torch.Generator, t: int, s: int) -> tuple[torch.Tensor, ...]:
    """W3 prefill attention operands for T queries over S keys: q_nope, q_pe, k_nope, k_pe, v."""
    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)
    return r(t, HEADS, NOPE), r(t, HEADS, ROPE), r(s, HEADS, NOPE), r(s, ROPE), r(s, HEADS, VDIM)


def prefill_attention_flops(t: int, s: int) -> float:
    """Matmul FLOPs of T causal queries at the end of S keys (the chunk's own square half-counted)."""
    return HEADS * (NOPE + ROPE + VDIM) * 2 * (t * (s - t) + t * t / 2)


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


def record_profile(shape: str, prof: Any, top: int, calls: int = 1) -> None:
    """The ``top`` kernels of a torch.profiler run by GPU time, per call, as rows."""
    for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:top]:
        print(f"  {ev.key[:70]:<70} {ev.device_time_total / calls:9.1f} us/call  x{ev.count // calls}")
        ROWS.append({"kernel": "profile", "shape": shape, "op": ev.key[:120],
                     "us": ev.device_time_total / calls, "count": ev.count // calls})


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


def failed_checks() -> list[dict[str, Any]]:
    return [c for c in CHECKS if not c.get("ok", True) and not c.get("info")]


def json_writer(out: Path) -> Callable[[], None]:
    """A function that rewrites ``out`` with the device, versions, ceilings and every row and
    check so far; scripts call it after each section, so a run cut short keeps what it measured."""
    props = torch.cuda.get_device_properties(0)
    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        meta = {
            "device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": __import__("triton").__version__,
            "ceilings": {"bw": BW_CEIL, "fp8": FP8_CEIL, "bf16": BF16_CEIL},
            "wall_s": time.time() - t0, "argv": sys.argv[1:],
        }
        out.write_text(json.dumps({"meta": meta, "checks": CHECKS, "rows": ROWS}, indent=1))

    return save


def run_sections(sections: dict[str, Callable[[], None]], names: list[str], save: Callable[[], None]) -> None:
    """Run the named sections in order; a failing section is recorded and the rest still run."""
    for name in names:
        try:
            sections[name]()
        except Exception as e:  # noqa: BLE001 - keep going, record the failure
            import traceback

            traceback.print_exc()
            print(f"SECTION {name} failed: {e!r}", flush=True)
            ROWS.append({"kernel": name, "error": repr(e)[:500]})
        torch.cuda.empty_cache()
        save()


def print_summary(out: Path, show: Callable[[dict[str, Any]], bool] = lambda r: True) -> None:
    print("\n=== summary ===")
    for r in ROWS:
        if "error" in r:
            print(f"{r['kernel']:<22} ERROR {r['error'][:150]}")
        elif show(r):
            print(fmt_row(r))
    print(f"checks: {len(CHECKS)} run, {len(failed_checks())} failed; wrote {out}")
