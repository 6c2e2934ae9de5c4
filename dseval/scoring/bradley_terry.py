"""Bradley-Terry win rates against a baseline, as Arena-Hard-Auto v0.1 scores a model.

Li et al. (2024), "From Crowdsourced Data to High-Quality Benchmarks: Arena-Hard and
BenchBuilder Pipeline"; the arithmetic follows the repository's ``show_result.py`` of the v0.1
leaderboard (lmarena/arena-hard-auto, 2024):

* every judged game becomes battles between the model and the baseline: a strong verdict
  (``A>>B``) counts as ``STRONG_WEIGHT`` identical battles, a plain one (``A>B``) or a tie as one,
  an unparseable verdict as none;
* a tie is half a win for each side (the repository duplicates every battle and lets one copy
  of a tie go to each side, which is the same likelihood);
* ratings are the unpenalized logistic maximum-likelihood fit without intercept, anchored at the
  baseline (the repository's Elo scale of 400/log 10 around 1000 is a reparametrisation that
  changes no win rate, so ratings here are in natural-log units around 0);
* the score is the fitted probability of beating the baseline; its 95% interval takes the 2.5th
  and 97.5th percentiles of the ratings refitted on battles resampled with replacement, turned
  into win rates the same way.

With only the model and its baseline the fit has a closed form (the win rate is the weighted
share of battles won, ties counted half), which is what the tests check the Newton fit against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Battles per strong verdict (``--weight`` in the repository).
STRONG_WEIGHT = 3
#: Bootstrap rounds and seed of the repository's defaults (``--num-rounds 100``, seed 42; numpy's
#: generator here, so the resampled battles are not the repository's own draws).
BOOTSTRAP_ROUNDS = 100
BOOTSTRAP_SEED = 42
#: A vanishing ridge keeps the fit finite when one side wins every battle (the unpenalized MLE
#: is then infinite; the repository's solver stops at a large rating, a win rate of ~100%).
RIDGE = 1e-9


@dataclass(frozen=True)
class WinRate:
    """Probability of beating the baseline with its bootstrap interval and spread."""

    score: float
    lower: float
    upper: float
    stderr: float
    battles: int


def fit_ratings(a: np.ndarray, b: np.ndarray, outcome: np.ndarray, players: int, anchor: int = 0) -> np.ndarray:
    """Bradley-Terry ratings (natural-log odds units) of ``players`` from battles ``a[i]`` vs
    ``b[i]`` where ``outcome[i]`` is 1 when ``a`` won, 0 when ``b`` won and 0.5 for a tie.
    ``anchor`` is fixed at 0. Newton's method on the log-likelihood, with step halving."""
    free = [p for p in range(players) if p != anchor]
    column = {p: i for i, p in enumerate(free)}
    x = np.zeros((len(outcome), len(free)))
    rows = np.arange(len(outcome))
    for side, sign in ((a, 1.0), (b, -1.0)):
        cols = np.array([column.get(int(p), -1) for p in side], dtype=int)
        mask = cols >= 0
        x[rows[mask], cols[mask]] = sign

    def objective(theta: np.ndarray) -> float:
        eta = x @ theta
        return float(np.sum(outcome * -np.logaddexp(0, -eta) + (1 - outcome) * -np.logaddexp(0, eta)) - RIDGE / 2 * theta @ theta)

    theta = np.zeros(len(free))
    value = objective(theta)
    for _ in range(200):
        prob = 1 / (1 + np.exp(-(x @ theta)))
        grad = x.T @ (outcome - prob) - RIDGE * theta
        hessian = (x.T * (prob * (1 - prob))) @ x + RIDGE * np.eye(len(free))
        step = np.linalg.solve(hessian, grad)
        while True:  # halve until the likelihood does not fall (it always rises near the optimum)
            candidate = objective(theta + step)
            if candidate >= value or np.max(np.abs(step)) < 1e-12:
                break
            step = step / 2
        theta, value = theta + step, candidate
        if np.max(np.abs(step)) < 1e-10:
            break
    ratings = np.zeros(players)
    ratings[free] = theta
    return ratings


def battle_outcomes(games: Sequence[float | None], strong: Sequence[bool]) -> np.ndarray:
    """The model's battle outcomes (1 win, 0.5 tie, 0 loss) from per-game results: a game with a
    strong verdict gives ``STRONG_WEIGHT`` battles, an unparseable one (None) gives none."""
    outcomes: list[float] = []
    for result, is_strong in zip(games, strong, strict=True):
        if result is not None:
            outcomes += [result] * (STRONG_WEIGHT if is_strong else 1)
    return np.array(outcomes, dtype=float)


def win_rate_vs_baseline(outcomes: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED) -> WinRate:
    """The model's Bradley-Terry win rate against the baseline (player 0) from its battle
    outcomes, with the percentile bootstrap over battles."""
    n = len(outcomes)
    if n == 0:
        return WinRate(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    model, baseline = np.ones(n, dtype=int), np.zeros(n, dtype=int)

    def rating(sample: np.ndarray) -> float:
        return float(fit_ratings(model, baseline, sample, players=2)[1])

    rng = np.random.default_rng(seed)
    boot = np.array([rating(outcomes[rng.integers(0, n, n)]) for _ in range(rounds)])
    win = lambda r: float(1 / (1 + np.exp(-r)))  # noqa: E731 - rating relative to the anchor -> win rate
    return WinRate(
        score=win(rating(outcomes)),
        lower=win(np.percentile(boot, 2.5)),
        upper=win(np.percentile(boot, 97.5)),
        stderr=float(np.std([win(r) for r in boot], ddof=1)),
        battles=n,
    )
