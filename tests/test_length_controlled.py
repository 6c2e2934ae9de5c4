"""AlpacaEval 2.0's length-controlled win rate against the official ``alpaca-eval`` package (0.6.6):
tests/fixtures/alpacaeval_glm.json holds synthetic annotations and what the package computes for
them with each of its GLM formulas (tests/fixtures/make_alpacaeval_glm.py wrote it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dseval.scoring.length_controlled import GamedRows, length_controlled_win_rate

FIXTURE = Path(__file__).parent / "fixtures" / "alpacaeval_glm.json"
CASES = json.loads(FIXTURE.read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{len(c['preference'])}")
@pytest.mark.parametrize("formula", ["length_controlled_minimal", "length_controlled_noreg", "length_controlled_v1"])
def test_matches_the_official_package(case: dict, formula: str) -> None:
    preference = np.array([np.nan if p is None else p for p in case["preference"]])
    kwargs: dict = {}
    if formula != "length_controlled_minimal":
        kwargs["difficulty"] = np.array(case["difficulty"])
    if formula == "length_controlled_v1":
        rows = case["gamed"]
        kwargs["gamed"] = GamedRows(*(np.array([r[k] for r in rows]) for k in ("preference", "std_delta_len", "instruction_difficulty")))
    result = length_controlled_win_rate(preference, case["len_model"], case["len_baseline"], **kwargs)
    expected = case["expected"][formula]
    assert result.formula == formula
    # liblinear (the package's solver) stops at a loose tolerance; dseval's fit converges fully
    assert 100 * result.win_rate == pytest.approx(expected["length_controlled_winrate"], abs=2e-3)
    assert 100 * result.stderr == pytest.approx(expected["lc_standard_error"], abs=2e-3)
    raw = np.nanmean(preference) * 100
    assert raw == pytest.approx(expected["win_rate"], abs=1e-9)


def test_longer_outputs_preferred_lower_the_controlled_rate() -> None:
    """A judge swayed by length alone and a model that is mostly longer than an equally good
    baseline: the raw win rate is inflated, the length-controlled rate is back near one half."""
    rng = np.random.default_rng(3)
    len_baseline = rng.integers(500, 3000, 400)
    len_model = len_baseline + rng.integers(-600, 2400, 400)
    swayed = 1 / (1 + np.exp(-3 * np.tanh((len_model - len_baseline) / 1000)))
    preference = (rng.random(400) < swayed).astype(float)
    result = length_controlled_win_rate(preference, len_model, len_baseline)
    assert result.weights["np.tanh(std_delta_len)"] < 0  # d = baseline - model: a longer model output wins more
    assert preference.mean() > 0.7
    assert result.win_rate == pytest.approx(0.5, abs=0.08)


def test_too_few_preferences_give_nan() -> None:
    assert np.isnan(length_controlled_win_rate(np.array([1.0, 0.0, np.nan]), [1, 2, 3], [3, 2, 1]).win_rate)
