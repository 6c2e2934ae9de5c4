"""AlpacaEval 2.0's length-controlled win rate (Dubois et al., 2024, "Length-Controlled AlpacaEval:
A Simple Way to Debias Automatic Evaluators"), fitted without the ``alpaca-eval`` package.

The judge's preference for the model over the baseline on instruction ``i`` (1 model wins, 0.5 a
tie, 0 the baseline wins) is modelled by a logistic GLM without intercept:

    logit P(model wins on i) = w_len * tanh(d_i) + w_diff * difficulty_i + w_model,

where ``d_i`` is the baseline's length minus the model's (in characters) divided by the standard
deviation of that difference over all instructions, and ``difficulty_i`` the instruction's
difficulty. The length-controlled win rate is the GLM's mean predicted preference with the length
term removed (``d_i = 0``), over every instruction, and its standard error the standard error of
those predictions. As ``alpaca_eval.metrics.glm_winrate`` fits it:

* targets are the preferences themselves (fractional), instructions without a parsed preference
  are left out of the fit but kept in the prediction;
* the fit is L1-penalised, the penalty's inverse strength C chosen from ``logspace(-4, 4, 10)``
  by 5-fold grouped cross-validation on the log loss (sklearn's ``GroupKFold`` fold assignment),
  then refitted on all rows at the chosen C;
* with the Hub's gamed-baseline annotations (``df_gamed.csv``), their rows join the fit at
  weight ``REGULARIZE_TO_BASELINE / 2`` with the model term absent: the paper's regularisation
  of the length and difficulty weights towards the baseline's (formula ``length_controlled_v1``).
  With only instruction difficulties it is ``length_controlled_noreg``, with neither
  ``length_controlled_minimal`` (no difficulty term).

The penalised fit is solved to convergence (proximal Newton) where the package calls liblinear,
whose stopping tolerance is loose; the two agree to the tolerance the tests state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CS = np.logspace(-4, 4, 10)
FOLDS = 5
#: Weight of the gamed-baseline rows, split between the two gamed baselines (hence / 2 in use).
REGULARIZE_TO_BASELINE = 0.2
_EPS = 1e-15


@dataclass(frozen=True)
class GamedRows:
    """Annotations of the baseline against its own length-gamed variants: the rows that
    regularise the length and difficulty weights (feature columns as in the fit)."""

    preference: np.ndarray
    std_delta_len: np.ndarray
    difficulty: np.ndarray


@dataclass(frozen=True)
class LengthControlled:
    win_rate: float
    stderr: float
    weights: dict[str, float]
    formula: str
    C: float


def _logloss(w: np.ndarray, x: np.ndarray, p: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted cross-entropy of fractional targets ``p`` and its gradient."""
    eta = x @ w
    loss = np.sum(s * (p * np.logaddexp(0, -eta) + (1 - p) * np.logaddexp(0, eta)))
    prob = np.exp(-np.logaddexp(0, -eta))
    return float(loss), x.T @ (s * (prob - p))


def fit_l1(x: np.ndarray, p: np.ndarray, s: np.ndarray, c: float) -> np.ndarray:
    """argmin_w ||w||_1 / C + sum_i s_i * crossentropy(p_i, sigmoid(x_i w)) (liblinear's L1
    logistic objective divided by C), by proximal Newton: each step minimises the loss's
    quadratic model plus the L1 term by coordinate descent, then backtracks on the objective."""
    k = x.shape[1]
    penalty = 1 / c

    def objective(w: np.ndarray) -> float:
        return _logloss(w, x, p, s)[0] + penalty * float(np.sum(np.abs(w)))

    w, value = np.zeros(k), objective(np.zeros(k))
    for _ in range(100):
        _, grad = _logloss(w, x, p, s)
        prob = np.exp(-np.logaddexp(0, -(x @ w)))
        hessian = (x.T * (s * prob * (1 - prob))) @ x + 1e-12 * np.eye(k)
        new = w.copy()
        for _ in range(100):  # coordinate descent on the quadratic model: soft-thresholded steps
            before = new.copy()
            for j in range(k):
                slope = grad[j] + hessian[j] @ (new - w) - hessian[j, j] * new[j]
                new[j] = -np.sign(slope) * max(abs(slope) - penalty, 0.0) / hessian[j, j]
            if np.max(np.abs(new - before)) < 1e-15:
                break
        step = new - w
        candidate = objective(w + step)
        while candidate > value and np.max(np.abs(step)) > 1e-15:
            step /= 2
            candidate = objective(w + step)
        w, improvement, value = w + step, value - candidate, min(candidate, value)
        if np.max(np.abs(step)) < 1e-12 or improvement < 1e-15 * max(1.0, abs(value)):
            break
    return w


def _cv_score(w: np.ndarray, x: np.ndarray, p: np.ndarray, s: np.ndarray) -> float:
    """The package's CV score: minus the mean weighted log loss over the held-out rows (it
    duplicates every row into a positive and a negative example, which leaves the mean as is)."""
    q = np.clip(1 / (1 + np.exp(-(x @ w))), _EPS, 1 - _EPS)
    return float(np.mean(s * (p * np.log(q) + (1 - p) * np.log(1 - q))))


def choose_c(x: np.ndarray, p: np.ndarray, s: np.ndarray) -> float:
    """C by grouped 5-fold CV: row g (of n) is held out in fold (n - 1 - g) % 5, as GroupKFold
    deals equal-sized groups (most recent first) to the lightest fold."""
    n = len(p)
    fold = (n - 1 - np.arange(n)) % FOLDS
    totals = np.zeros(len(CS))
    for f in range(FOLDS):
        train, test = fold != f, fold == f
        for j, c in enumerate(CS):
            w = fit_l1(x[train], p[train], s[train], c)
            totals[j] += _cv_score(w, x[test], p[test], s[test])
    return float(CS[int(np.argmax(totals))])


def length_controlled_win_rate(
    preference: np.ndarray,
    len_model: np.ndarray,
    len_baseline: np.ndarray,
    difficulty: np.ndarray | None = None,
    gamed: GamedRows | None = None,
) -> LengthControlled:
    """Fit the GLM to one model's preferences (NaN where the judge gave none) and predict; NaN
    when fewer preferences than folds were parsed (nothing to fit)."""
    preference = np.asarray(preference, dtype=float)
    keep = ~np.isnan(preference)
    if keep.sum() < FOLDS:
        return LengthControlled(float("nan"), float("nan"), {}, "", float("nan"))
    delta = np.asarray(len_baseline, dtype=float) - np.asarray(len_model, dtype=float)
    spread = np.std(delta, ddof=1)
    std_delta = delta / spread if spread > 0 else np.zeros_like(delta)
    names = ["np.tanh(std_delta_len)"]
    features = [np.tanh(std_delta)]
    if difficulty is not None:
        names.append("instruction_difficulty")
        features.append(np.asarray(difficulty, dtype=float))
    names.append("not_gamed_baseline.astype(float)")
    features.append(np.ones(len(preference)))
    x = np.stack(features, axis=1)
    x_fit, p_fit, s_fit = x[keep], preference[keep], np.ones(int(keep.sum()))
    formula = "length_controlled_minimal" if difficulty is None else "length_controlled_noreg"
    if gamed is not None:
        if difficulty is None:
            raise ValueError("regularising to the gamed baselines needs instruction difficulties")
        formula = "length_controlled_v1"
        x_gamed = np.stack([np.tanh(gamed.std_delta_len), gamed.difficulty, np.zeros(len(gamed.preference))], axis=1)
        x_fit = np.concatenate([x_gamed, x_fit])
        p_fit = np.concatenate([gamed.preference, p_fit])
        s_fit = np.concatenate([np.full(len(gamed.preference), REGULARIZE_TO_BASELINE / 2), s_fit])
    c = choose_c(x_fit, p_fit, s_fit)
    w = fit_l1(x_fit, p_fit, s_fit, c)
    x_test = x.copy()
    x_test[:, 0] = 0.0  # tanh(0): no length difference
    predicted = 1 / (1 + np.exp(-(x_test @ w)))
    return LengthControlled(
        win_rate=float(np.mean(predicted)),
        stderr=float(np.std(predicted, ddof=1) / np.sqrt(len(predicted))),
        weights=dict(zip(names, map(float, w), strict=True)),
        formula=formula,
        C=c,
    )
