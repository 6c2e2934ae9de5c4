"""First-use cost of each prefill-attention backend on prompt lengths it has not seen yet.

Why: cuDNN's fused attention runs from an execution plan built per input shape, and an
evaluation's prompts come in hundreds of distinct lengths, so a per-shape cost is paid per
request rather than once. For every backend of ``dseval.kernels.mla_prefill`` this times W3's
prefill attention (128 heads, q/k 192 wide, v 128) on ``--lengths`` random prompt lengths, each
called twice in a row: the first call includes whatever the backend builds for a new shape, the
second is the steady state. Each backend gets its own lengths (no plan is shared across
backends). Prints a table, writes JSON. GPU only.

    python bench/prefill_shapes.py [--lengths 24] [--min-len 64] [--max-len 3072] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HEADS, NOPE, ROPE, V_DIM = 128, 128, 64, 128


def timed_call(args: tuple[torch.Tensor, ...], attention: Any) -> float:
    """Host-clock seconds of one prefill-attention call on ``args``, synchronised both ends."""
    from dseval.kernels.mla_prefill import mla_prefill_attention

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    mla_prefill_attention(*args, NOPE ** -0.5, attention)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_backend(backend: str, lengths: list[int]) -> dict:
    from dseval.kernels import mla_prefill as mp

    attention = mp.resolve_prefill_attention(backend, torch.device("cuda"), torch.bfloat16, NOPE, ROPE, V_DIM)
    g = torch.Generator(device="cuda").manual_seed(0)
    first, second = [], []
    for n in lengths:
        def r(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)

        args = (r(n, HEADS, NOPE), r(n, HEADS, ROPE), r(n, HEADS, NOPE), r(n, ROPE), r(n, HEADS, V_DIM))
        first.append(timed_call(args, attention))
        second.append(timed_call(args, attention))
    overhead = [a - b for a, b in zip(first, second)]
    return {"backend": backend, "lengths": lengths, "first_s": first, "second_s": second,
            "median_first_ms": 1e3 * statistics.median(first), "median_second_ms": 1e3 * statistics.median(second),
            "median_new_shape_overhead_ms": 1e3 * statistics.median(overhead),
            "total_first_s": sum(first), "total_second_s": sum(second)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, default=24)
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=3072)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "bench" / "prefill_shapes.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("prefill_shapes.py measures CUDA attention backends; no GPU here", file=sys.stderr)
        return 2
    from dseval.kernels.mla_prefill import PREFILL_BACKENDS

    rng = random.Random(0)
    # warm-up outside the timed lengths: library initialisation is not a per-shape cost
    warm = run_backend("causal_bias", [32])
    rows = []
    used: set[int] = {32}
    for backend in [b for b in PREFILL_BACKENDS if b != "auto"]:
        lengths = []
        while len(lengths) < args.lengths:
            n = rng.randrange(args.min_len, args.max_len + 1)
            if n not in used:
                used.add(n)
                lengths.append(n)
        rows.append(run_backend(backend, lengths))
    print("\n| backend | median 1st call ms | median 2nd call ms | median new-shape cost ms | "
          f"{args.lengths} prompts, 1st calls s | same, 2nd calls s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['median_first_ms']:.2f} | {r['median_second_ms']:.2f} | "
              f"{r['median_new_shape_overhead_ms']:.2f} | {r['total_first_s']:.2f} | {r['total_second_s']:.3f} |")
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "argv": sys.argv, "warmup": warm}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
