"""Arena-Hard's Bradley-Terry scoring against hand-computable cases: with the model and its
baseline alone the MLE win rate is the weighted share of battles won (ties half), strong verdicts
count three times, unparseable ones not at all, and the ratings of several players satisfy the
likelihood equations."""

from __future__ import annotations

import numpy as np
import pytest

from dseval.scoring.bradley_terry import STRONG_WEIGHT, battle_outcomes, fit_ratings, win_rate_vs_baseline
from dseval.tasks.arena_hard import game_results, parse_verdict


def test_two_player_mle_is_the_weighted_win_share() -> None:
    # 3 strong wins (x3), 2 wins, 4 ties, 1 loss, 1 strong loss (x3), 2 unparseable
    games = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, None, None]
    strong = [True, True, True, False, False, False, False, False, False, False, True, False, False]
    outcomes = battle_outcomes(games, strong)
    assert len(outcomes) == 3 * STRONG_WEIGHT + 2 + 4 + 1 + STRONG_WEIGHT
    share = (9 + 2 + 4 * 0.5) / 19
    rate = win_rate_vs_baseline(outcomes)
    assert rate.score == pytest.approx(share, abs=1e-9)
    assert rate.lower < rate.score < rate.upper
    assert rate.battles == 19


def test_bootstrap_interval_narrows_with_more_battles_and_is_reproducible() -> None:
    few = np.array([1.0, 0.0, 1.0, 0.5, 1.0, 0.0] * 5)
    many = np.tile(few, 20)
    small, large = win_rate_vs_baseline(few), win_rate_vs_baseline(many)
    assert small.score == pytest.approx(large.score)
    assert large.upper - large.lower < (small.upper - small.lower) / 2
    assert win_rate_vs_baseline(few) == small  # fixed seed: a rescore gives the same interval


def test_a_model_that_never_loses_gets_a_finite_win_rate_near_one() -> None:
    rate = win_rate_vs_baseline(np.ones(12))
    assert 0.999 < rate.score <= 1.0 and np.isfinite(rate.lower)


def test_several_players_satisfy_the_likelihood_equations_and_the_anchor() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    keep = a != b
    a, b = a[keep], b[keep]
    strength = np.array([0.0, 1.0, -0.5, 0.3])
    outcome = (rng.random(len(a)) < 1 / (1 + np.exp(-(strength[a] - strength[b])))).astype(float)
    outcome[rng.random(len(a)) < 0.1] = 0.5
    ratings = fit_ratings(a, b, outcome, players=4, anchor=2)
    assert ratings[2] == 0.0
    expected = 1 / (1 + np.exp(-(ratings[a] - ratings[b])))
    for player in (0, 1, 3):  # observed score of each free player = its expected score
        observed = np.sum(np.where(a == player, outcome, 0) + np.where(b == player, 1 - outcome, 0))
        predicted = np.sum(np.where(a == player, expected, 0) + np.where(b == player, 1 - expected, 0))
        assert observed == pytest.approx(predicted, abs=1e-6)


def test_verdict_parsing_and_answer_order() -> None:
    assert parse_verdict("reasoning... My final verdict: [[B>>A]]") == "B>>A"
    assert parse_verdict("[[A>B]] at first, finally [[A>B]]") == "A>B"
    assert parse_verdict("[[A>B]] or maybe [[B>A]]") is None  # two distinct labels
    assert parse_verdict("A is better [A>B]") is None
    # game 0: the model is Assistant B; game 1: the model is Assistant A
    results, strong, labels = game_results(["[[B>>A]]", "[[A>B]]", "[[A=B]]", "[[A>>B]]", "nothing"])
    assert results == [1.0, 1.0, 0.5, 1.0, None]
    assert strong == [True, False, False, True, False]
    assert labels == ["B>>A", "A>B", "A=B", "A>>B", None]
