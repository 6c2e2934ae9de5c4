"""Launch-config sweeps of dseval.kernels at DeepSeek-V3 ("W3") shapes: the grids behind the
default tables in kernels/fp8_gemm.py (``_SKINNY_TUNED``), kernels/mla_decode.py, kernels/moe.py
and kernels/mla_prefill_fp8.py.

    python bench/kernel_sweep.py --only gemm_tune mla_tune --workers 15 --deadline-s 240 \
        [--out results/bench/kernel_sweep.json]
    python bench/kernel_sweep.py --only prefill_attn moe moe_prefill gemm_prefill

gemm_tune / mla_tune time every decode GEMM and MLA-decode cell over its grid as CUDA-graph
replays, re-time the three fastest (the first timing favours lucky configs) and check the
winner against float64 (GEMM) or fp32 (MLA). ``--workers`` compiles their few hundred kernels
in parallel processes first; the timed pass runs only what a worker ran cleanly, since a kernel
that faults leaves the CUDA context unusable. ``--deadline-s`` stops the grids early (the JSON,
rewritten after every cell, keeps what ran). The other sections time the default config beside
each candidate in one process, so a row is comparable with its neighbours.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from common import (cudnn_prefill_attention, BF16_CEIL, DENSE_I, HEADS, HID, KVLORA, LINEARS, MOE_I, NOPE, QLORA, ROOT, ROPE, VDIM,
                    K, ROWS, bench, bench_graph, check, copies, json_writer, linear_bytes, mla_inputs, moe_flops,
                    moe_fp8_weights, prefill_attention_flops, prefill_attention_inputs, print_summary, rand_linear,
                    record, record_profile, rel, require_gpu, routed_tokens, run_sections)


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


def gemm_tune_jobs() -> list[tuple[str, int, Any]]:
    jobs = []
    for m in TUNE_M:
        for name, (n, k, _) in DECODE_GEMMS.items():
            jobs.append((name, m, K.fp8_gemm.default_skinny_config(m, n, k, torch.device("cuda"))))
            jobs += [(name, m, c) for c in gemm_tune_grid(m, n, k)]
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


def mla_tune_jobs() -> list[tuple[tuple[int, int, int], Any]]:
    jobs = []
    for cell in MLA_TUNE_CELLS:
        jobs.append((cell, K.default_mla_config(cell[0], cell[1])))
        jobs += [(cell, c) for c in mla_tune_grid(*cell)]
    return jobs


def _job_id(kind: str, cell: Any, label: str) -> str:
    return f"{kind}|{cell}|{label}"


def _shard(key: tuple[Any, ...], n: int) -> int:
    return zlib.crc32(repr(key).encode()) % n  # stable across processes, unlike hash()


def precompile_shard(sections: list[str], shard: int, nshards: int, out: Path) -> None:
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
        for name, m, c in gemm_tune_jobs():
            n, k, _ = DECODE_GEMMS[name]
            if _shard(_gemm_compile_key(m, k, c), nshards) != shard:
                continue
            if name not in weights:
                weights[name] = rand_linear(n, k)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            if not attempt(_job_id("gemm", (name, m), _gemm_label(c, k)),
                           lambda x=x, w=weights[name], c=c: K.fp8_gemm_w8a16_skinny(x, *w, c)):
                return False
        return True

    def mla_jobs() -> None:
        nblk = 256  # a small cache behind full-size block tables: same strides, same kernels
        cache = torch.randn(nblk, 64, KVLORA + ROPE, device="cuda", dtype=torch.bfloat16)
        for (b, h, ctx), c in mla_tune_jobs():
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


def precompile(sections: list[str], workers: int, timeout_s: float) -> None:
    """Compile the tuning jobs in ``workers`` processes at once (a few hundred kernels at
    ~1 s each would take minutes in one process), then collect the jobs that ran."""
    global VERIFIED
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp())
    procs = [subprocess.Popen([sys.executable, __file__, "--only", *sections, "--tune-shard", f"{i}/{workers}",
                               "--out", str(tmp / f"shard{i}.json")])
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


def tune_gemm() -> None:
    """Each decode GEMM at each M: the default config, cuBLAS where it applies, the grid, the
    three fastest re-timed, and the two-launch twin of the winner and of the default."""
    for m in TUNE_M:
        for name, (n, k, count) in DECODE_GEMMS.items():
            _tune_gemm_cell(name, n, k, count, m)
            torch.cuda.empty_cache()
            _save()


def _tune_gemm_cell(name: str, n: int, k: int, count: int, m: int) -> None:
    nc = copies(n * k)
    ws_list = [rand_linear(n, k) for _ in range(nc)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    nbytes = linear_bytes(m, n, k)
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


def tune_mla() -> None:
    """Each MLA decode cell: the default config, the grid, the three fastest re-timed and the
    best checked against the fp32 reference."""
    for b, h, ctx in MLA_TUNE_CELLS:
        _tune_mla_cell(b, h, ctx)
        torch.cuda.empty_cache()
        _save()


def _tune_mla_cell(b: int, h: int, ctx: int) -> None:
    caches, bt, cl, qn, qp, nbytes, fl = mla_inputs(b, h, ctx, 64)
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


def sweep_moe() -> None:
    """Fused-MoE tile configs at decode (1 and 8 tokens, graph replays) and at 4K tokens."""
    w13, s13, w2, s2 = moe_fp8_weights()
    per_expert_bytes = 3 * MOE_I * HID
    decode = ((16, 64, 64, 4, 4), (16, 128, 128, 4, 3), (16, 64, 128, 4, 5), (16, 32, 64, 4, 4),
              (16, 128, 128, 8, 4), (32, 64, 128, 4, 4))
    prefill = ((64, 64, 128, 4, 3), (64, 128, 128, 4, 3), (64, 64, 128, 4, 4), (128, 64, 128, 8, 3),
               (128, 64, 256, 8, 3), (64, 64, 256, 4, 3))
    for t, cands in ((1, decode), (8, decode), (4096, prefill)):
        x, ids, wts = routed_tokens(t)
        nbytes = int(torch.unique(ids).numel()) * per_expert_bytes + t * HID * 4
        for cfg in [None, *(K.MoeConfig(*c) for c in cands)]:
            def run(cfg: Any = cfg) -> Any:
                return K.fused_moe(x, w13, s13, w2, s2, ids, wts, cfg)
            try:
                sec = bench_graph([run], reps=5) if t <= 128 else bench(run, quick=True)
            except Exception as e:  # noqa: BLE001 - a config may not fit shared memory
                print("sweep fail", cfg, repr(e)[:100])
                continue
            label = "default" if cfg is None else \
                f"bm={cfg.block_m} bn1={cfg.block_n1} bn2={cfg.block_n2} w={cfg.num_warps} st={cfg.num_stages}"
            record("sweep fused_moe fp8", f"T={t}", sec, nbytes=nbytes, flops=moe_flops(t), cfg=label)


def sweep_moe_prefill() -> None:
    """Prefill-sized MoE (FP8): fused vs unfused gate/up, tile shapes and program grouping
    (group_m), with a per-kernel profile at one 16K-token chunk (the engine's GPU budget)."""
    from torch.profiler import ProfilerActivity, profile

    w13, s13, w2, s2 = moe_fp8_weights()
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
    for t in (1024, 4096, 16384):
        x, ids, wts = routed_tokens(t)
        for name, cfg in cands:
            try:
                sec = bench(lambda: K.fused_moe(x, w13, s13, w2, s2, ids, wts, cfg), quick=True)
            except Exception as e:  # noqa: BLE001
                print("moe_prefill fail", name, repr(e)[:120])
                continue
            record("moe_prefill fp8", f"T={t}", sec, flops=moe_flops(t), cfg=name)
        if t == 16384:
            for name, cfg in (cands[1], cands[3], cands[8]):
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    K.fused_moe(x, w13, s13, w2, s2, ids, wts, cfg)
                    torch.cuda.synchronize()
                print(f"--- profile moe T={t} {name} ---")
                record_profile(f"moe T={t} {name}", prof, top=6)


def sweep_gemm_prefill() -> None:
    """W8A8 Triton GEMM tiles at M = 4096 on pre-quantized activations (the GEMM alone)."""
    for name, (n, k) in LINEARS.items():
        w, ws = rand_linear(n, k)
        m = 4096
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        qx, sx = K.per_token_group_quant_fp8(x, column_major_scales=True)
        for cfg in (None, *(K.GemmConfig(block_m=bm, block_n=bn, num_warps=w_, num_stages=st) for bm, bn, w_, st in (
                (128, 128, 8, 3), (128, 128, 4, 4), (64, 128, 4, 4), (128, 256, 8, 3), (64, 256, 8, 4),
                (128, 64, 4, 4)))):
            try:
                sec = bench(lambda: K.fp8_gemm_w8a8(qx, sx, w, ws, config=cfg), quick=True)
            except Exception as e:  # noqa: BLE001
                print("sweep fail", cfg, repr(e)[:100])
                continue
            label = "default" if cfg is None else \
                f"bm={cfg.block_m} bn={cfg.block_n} w={cfg.num_warps} st={cfg.num_stages}"
            record("sweep w8a8 gemm-only", f"{name} M={m}", sec, flops=2.0 * m * n * k, cfg=label)


def sweep_prefill_attention() -> None:
    """FP8 prefill-attention launch configs at the 128K shape (16K queries over 128K keys), the
    default first, each with its distance from cuDNN."""
    from dseval.kernels import mla_prefill as mp
    from dseval.kernels.mla_prefill_fp8 import Fp8AttentionConfig, mla_prefill_attention_fp8

    g = torch.Generator(device="cuda").manual_seed(0)
    t, s = 16384, 131072
    args = prefill_attention_inputs(g, t, s)
    ref = mp.mla_prefill_attention(*args, 0.1, cudnn_prefill_attention())
    cands = [Fp8AttentionConfig()] + [Fp8AttentionConfig(bm, bn, w, st) for bm, bn, w, st in (
        (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 3),
        (64, 64, 4, 4))]
    for i, c in enumerate(cands):
        try:
            err = rel(mla_prefill_attention_fp8(*args, 0.1, config=c), ref)
            sec = bench(lambda c=c: mla_prefill_attention_fp8(*args, 0.1, config=c), quick=True)
        except Exception as e:  # noqa: BLE001 (a config may not fit shared memory)
            print("prefill fp8 fail", c, repr(e)[:100])
            continue
        record("sweep prefill attn fp8", f"t={t} S={s} H={HEADS}", sec, flops=prefill_attention_flops(t, s),
               cfg=f"bm={c.block_m} bn={c.block_n} w={c.num_warps} st={c.num_stages}" + (" default" if i == 0 else ""),
               rel_vs_cudnn=err)


SECTIONS: dict[str, Callable[[], None]] = {
    "gemm_tune": tune_gemm,
    "mla_tune": tune_mla,
    "moe": sweep_moe,
    "moe_prefill": sweep_moe_prefill,
    "gemm_prefill": sweep_gemm_prefill,
    "prefill_attn": sweep_prefill_attention,
}
TUNE_SUMMARY = ("tune gemm default", "tune gemm scaled_mm", "tune gemm best", "tune gemm twin", "tune mla default",
                "tune mla best")


def main() -> None:
    global DEADLINE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "kernel_sweep.json")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), required=True, help="grids to run")
    ap.add_argument("--workers", type=int, default=0,
                    help="gemm_tune/mla_tune: compile their grids in this many processes first")
    ap.add_argument("--tune-shard", default=None, help=argparse.SUPPRESS)  # "I/N": one precompile worker
    ap.add_argument("--deadline-s", type=float, default=math.inf,
                    help="stop the gemm_tune/mla_tune grids this many seconds after the start (JSON keeps what ran)")
    args = ap.parse_args()
    require_gpu("bench/kernel_sweep.py")
    DEADLINE = time.time() + args.deadline_s
    if args.tune_shard:
        i, n = map(int, args.tune_shard.split("/"))
        precompile_shard(args.only, i, n, args.out)
        return
    save = json_writer(args.out)
    SAVE.append(save)
    tune = [s for s in args.only if s in ("gemm_tune", "mla_tune")]
    if tune and args.workers > 0:
        precompile(tune, args.workers, timeout_s=min(600.0, max(30.0, (DEADLINE - time.time()) / 2)))
    run_sections(SECTIONS, args.only, save)
    print_summary(args.out, show=lambda r: r["kernel"] in TUNE_SUMMARY)


if __name__ == "__main__":
    main()
