"""Build the ``retriever`` checkpoint folder, or re-derive its rotary score profiles.

    python bench/build_retriever.py --out PATH [--plain]   # write the checkpoint (config.json + shards)
    python bench/build_retriever.py --derive               # re-solve the profiles' linear programs

The weights come from :mod:`dseval.engine.loading.retriever` (no training; see
docs/retriever.md). ``--plain`` writes the negative control: the same tensors with
``rope_scaling`` removed from config.json. ``--derive`` prints the coefficient tables that module
holds as constants, solved here as linear programs (scipy's HiGHS) so the derivation is
reproducible but the build does not depend on a solver's version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a checkout runs without an install (the device machine has none)
from dseval.engine.loading import retriever as R  # noqa: E402
from dseval.engine.loading.presets import retriever_config  # noqa: E402


def _solve(rows: np.ndarray, bounds_rhs: np.ndarray, n: int) -> np.ndarray:
    """max t s.t. rows @ [a; b; c0; t] <= rhs and sum|a|+|b| <= 1 -> [a; b; c0; t]."""
    from scipy.optimize import linprog

    m = rows.shape[0]
    eye, zero = np.eye(n), np.zeros
    a_ub = [np.hstack([rows[:, : 2 * n], zero((m, 2 * n)), rows[:, 2 * n:]])]
    b_ub = [bounds_rhs]
    for sign in (1, -1):  # |a| <= u, |b| <= w
        a_ub.append(np.hstack([sign * eye, zero((n, n)), -eye, zero((n, n)), zero((n, 2))]))
        a_ub.append(np.hstack([zero((n, n)), sign * eye, zero((n, n)), -eye, zero((n, 2))]))
        b_ub += [zero(n), zero(n)]
    a_ub.append(np.hstack([zero(2 * n), np.ones(2 * n), [0, 0]])[None])
    b_ub.append(np.ones(1))
    cost = zero(4 * n + 2)
    cost[-1] = -1.0
    bounds = [(None, None)] * (2 * n) + [(0, None)] * (2 * n) + [(None, None)] * 2
    res = linprog(cost, A_ub=np.vstack(a_ub), b_ub=np.concatenate(b_ub), bounds=bounds, method="highs")
    return np.concatenate([res.x[: 2 * n], res.x[-2:]])


def derive_offset_profile(offset: int, theta: np.ndarray, horizon: int) -> np.ndarray:
    """Profile peaking at distance ``offset``: max margin S(offset) - S(d) over every other d in
    [0, horizon], found by adding the worst distances to the constraint set until none is violated."""
    n = len(theta)
    others = np.array([d for d in range(horizon + 1) if d != offset])
    active = others[others < 4096]
    while True:
        cos = np.cos(np.outer(active, theta)) - np.cos(offset * theta)
        sin = np.sin(np.outer(active, theta)) - np.sin(offset * theta)
        rows = np.hstack([cos, sin, np.zeros((len(active), 1)), np.ones((len(active), 1))])
        x = _solve(rows, np.zeros(len(active)), n)
        gaps = R.profile(x[:n], x[n:2 * n], theta, np.array([offset]))[0] - R.profile(x[:n], x[n:2 * n], theta, others)
        if gaps.min() >= x[-1] - 1e-9:
            return x[: 2 * n] / np.abs(x[: 2 * n]).sum()
        active = np.unique(np.concatenate([active, others[np.argsort(gaps)[:200]]]))


def derive_window_profile(theta: np.ndarray, window: float, beyond: int, horizon: int, flat: float) -> np.ndarray:
    """Profile within [0, flat] on distances [0, window] and as low as possible on [beyond, horizon]."""
    n = len(theta)
    inside = np.arange(0.0, window + 0.5, 0.5)
    outside = np.arange(beyond, horizon + 1, 4, dtype=float)

    def trig(x: np.ndarray) -> np.ndarray:
        return np.hstack([np.cos(np.outer(x, theta)), np.sin(np.outer(x, theta))])

    one_in, one_out = np.ones((len(inside), 1)), np.ones((len(outside), 1))
    rows = np.vstack([
        np.hstack([-trig(inside), -one_in, 0 * one_in]),  # S + c0 >= 0
        np.hstack([trig(inside), one_in, 0 * one_in]),  # S + c0 <= flat
        np.hstack([trig(outside), one_out, one_out]),  # S + c0 <= -t
    ])
    rhs = np.concatenate([np.zeros(len(inside)), np.full(len(inside), flat), np.zeros(len(outside))])
    x = _solve(rows, rhs, n)
    return x[: 2 * n] / np.abs(x[: 2 * n]).sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="checkpoint folder to write")
    parser.add_argument("--plain", action="store_true", help="write the control (no rope_scaling)")
    parser.add_argument("--derive", action="store_true", help="re-solve and print the profile coefficients")
    args = parser.parse_args()
    if args.derive:
        config = retriever_config()
        freqs = R.original_freqs(config)
        for offset in R.LOOKBACK_OFFSETS:
            coef = derive_offset_profile(offset, freqs[list(R.SHIFT_DIMS)], R.HORIZON)
            print(f"offset {offset}:", np.round(coef, 6).tolist())
        near = R.HORIZON / config.rope_scaling.factor
        coef = derive_window_profile(freqs[list(R.WINDOW_DIMS)], near, R.BEYOND, R.HORIZON, R.WINDOW_FLAT)
        print("window:", np.round(coef, 6).tolist())
    if args.out:
        R.write_retriever(args.out, retriever_config(), plain=args.plain)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
