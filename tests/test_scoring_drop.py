"""DROP EM/F1 against hand-worked cases of the official definition (Dua et al., 2019,
evaluation script): numbers as floats, dates, multi-span bags, articles, punctuation."""

from __future__ import annotations

import pytest

from dseval.scoring.drop_f1 import best_em_f1, em_f1, normalize_span

@pytest.mark.parametrize(
    ("span", "normal"),
    [
        ("The Pakistanis.", "pakistanis"),
        ("1,000-yard run", "1000.0 yard run"),  # hyphen splits tokens; commas leave numbers
        ("74.30", "74.3"),
        ("-3", "3.0"),  # the script tokenizes on hyphens, so a minus sign is a separator
        ("an apple a day", "apple day"),
        ("  Special   Activities  Division ", "special activities division"),
    ],
)
def test_normalization(span: str, normal: str) -> None:
    assert normalize_span(span) == normal


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        # integers and decimals: compared as floats, and a missing gold number zeroes F1
        ("5", "5", (1.0, 1.0)),
        ("5.0", "5", (1.0, 1.0)),
        ("five", "5", (0.0, 0.0)),
        ("74.30", "74.3", (1.0, 1.0)),
        ("74", "74.3", (0.0, 0.0)),
        ("74.3 percent", "74.3", (0.0, 0.67)),  # P=1/2, R=1 -> 2/3, rounded to 2 decimals
        ("1,000", "1000", (1.0, 1.0)),
        # dates: the same bag in another order is F1 1 but not an exact match
        ("September 30, 1686", "30 September 1686", (0.0, 1.0)),
        ("30 September 1687", "30 September 1686", (0.0, 0.67)),  # gold number 30 still shared
        ("1687", "30 September 1686", (0.0, 0.0)),  # no gold number present
        # articles and punctuation
        ("The Pakistanis.", "Pakistanis", (1.0, 1.0)),
        ("a truce called", "truce called!", (1.0, 1.0)),
        ("the Special Activities Division", "Special Activities Division", (1.0, 1.0)),
        # partial overlap without numbers
        ("rental vacancy rate", "vacancy rate", (0.0, 0.8)),  # P=2/3, R=1
        ("", "5", (0.0, 0.0)),
    ],
)
def test_single_span(predicted: str, gold: str, expected: tuple[float, float]) -> None:
    assert em_f1(predicted, gold) == expected


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        # bags matched one to one by optimal assignment, order irrelevant
        (("Shaun Hill", "Tony Romo"), ("Tony Romo", "Shaun Hill"), (1.0, 1.0)),
        # a missing span counts as a zero bag: mean of [1, 0]
        (("Tony Romo",), ("Tony Romo", "Shaun Hill"), (0.0, 0.5)),
        # an extra predicted span also lowers F1: max(#gold, #pred) bags
        (("Tony Romo", "Shaun Hill", "Jason Witten"), ("Tony Romo", "Shaun Hill"), (0.0, 0.67)),
        # one string against two gold spans: best pair 2/5 precision, recall 1 -> 0.571; mean with 0
        ("Tony Romo and Shaun Hill", ("Tony Romo", "Shaun Hill"), (0.0, 0.29)),
        # number mismatch zeroes the pair even when a cross pairing would share words
        (("2 yards", "4 yards"), ("2 yards", "3 yards"), (0.0, 0.5)),
        # duplicates: EM needs the same count, not just the same set
        (("Romo", "Romo"), ("Romo",), (0.0, 0.5)),
    ],
)
def test_multi_span(predicted, gold, expected: tuple[float, float]) -> None:
    assert em_f1(predicted, gold) == expected


def test_assignment_is_optimal_not_greedy() -> None:
    # Pairing each gold with its best prediction greedily would give "alpha beta gamma" the
    # prediction "alpha beta" (.8) and leave "alpha beta" with "gamma" (0): mean .4. The optimal
    # assignment pairs "alpha beta" with itself (1.0) and "alpha beta gamma" with "gamma" (.5).
    predicted = ("alpha beta", "gamma")
    gold = ("alpha beta gamma", "alpha beta")
    assert em_f1(predicted, gold) == (0.0, 0.75)


def test_max_over_golds_taken_separately() -> None:
    golds = ["Pakistanis and Filipinos", "Pakistani and Filipino"]
    assert best_em_f1("Pakistani and Filipino", golds) == (1.0, 1.0)
    # partial credit from the best gold: "pakistanis" is 1 of 3 tokens of the first (P=1, R=1/3)
    assert best_em_f1("Pakistanis", golds) == (0.0, 0.5)
    # empty golds (a trailing "|") are skipped, as in simple-evals
    assert best_em_f1("19", ["19", ""]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        best_em_f1("x", [" "])
