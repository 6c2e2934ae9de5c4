"""Per-layer decode step times from W3 runs at several layer counts, extrapolated to DeepSeek-V3's 61.

Reads the JSON of ``bench/engine_w3.py --layers N`` runs (same layout, same batches; the first
layer dense, the rest MoE), fits step time = a + m * (N - 1) by least squares for each batch, and
extrapolates to the full model: 3 dense + 58 MoE layers, counting each extra dense layer as one
MoE layer (at these batch sizes a dense layer reads 0.40 GB of FP8 MLP weights, about what the
~9 experts one token touches read; at B >= 32 MoE layers read more, so this errs slow).

    python bench/extrapolate_layers.py results/bench/x2_tp2ep2_layers{4,12,20}.json \
        [--out results/bench/extrapolation_61_layers.json]

Prints one table (per batch: ms per MoE layer for the full step and the graph replay, the fitted
intercept, and the 61-layer step time and tok/s) and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FULL_MOE_LAYERS = 58
FULL_DENSE_LAYERS = 3


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (intercept at one layer, slope per added layer) of (layers, ms) points."""
    xs = [n - 1 for n, _ in points]
    ys = [t for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in args.runs]
    layouts = {r["meta"].get("layout") for r in runs}
    if len(layouts) != 1 or len(runs) < 2:
        raise SystemExit(f"need >= 2 runs of one layout, got {len(runs)} of {sorted(map(str, layouts))}")
    rows = []
    for batch in sorted({c["batch"] for c in runs[0]["dseval"]}):
        step, replay = [], []
        for r in runs:
            cell = next(c for c in r["dseval"] if c["batch"] == batch)
            step.append((r["meta"]["layers"], cell["step_ms"]))  # median
            replay.append((r["meta"]["layers"], cell["replay_ms"]))
        a, m = fit(step)
        _, m_replay = fit(replay)
        full = a + (FULL_MOE_LAYERS + FULL_DENSE_LAYERS - 1) * m
        rows.append({"batch": batch, "ms_per_moe_layer_step": m, "ms_per_moe_layer_replay": m_replay,
                     "intercept_ms": a, "full_61_layer_step_ms": full, "full_61_layer_tok_s": batch * 1e3 / full,
                     "points": step})
    print(f"layout {layouts.pop()}, layer counts {sorted(r['meta']['layers'] for r in runs)}")
    print("| batch | ms / MoE layer (step) | ms / MoE layer (replay) | intercept ms | 61-layer ms/step | 61-layer tok/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['ms_per_moe_layer_step']:.3f} | {r['ms_per_moe_layer_replay']:.3f} | "
              f"{r['intercept_ms']:.3f} | {r['full_61_layer_step_ms']:.1f} | {r['full_61_layer_tok_s']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps({"runs": [str(p) for p in args.runs], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
