"""Math answer extraction, Minerva normalization and equivalence on known cases."""

from __future__ import annotations

import threading

import pytest

from dseval.scoring.math_answers import (

    answers_match,
    extract_answer,
    final_answer_sentence,
    last_boxed,
    normalize_answer,
)


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{\\left\\{ 2, 3 \\right\\}}", "\\left\\{ 2, 3 \\right\\}"),  # last, nested
        ("\\fbox{7}", "7"),
        ("The answer is $\\boxed 5$.", "5"),
        ("\\boxed {12}", "12"),
        ("\\boxed{\\frac{1}{2}", None),  # cut off by the token limit: no half answer
        ("no box here", None),
    ],
)
def test_last_boxed(text: str, content: str | None) -> None:
    found = last_boxed(text)
    assert (found[1] if found else None) == content


def test_final_answer_sentence_minerva_form() -> None:
    text = "...so $n=16$.\nFinal Answer: The final answer is $16$. I hope it is correct."
    assert final_answer_sentence(text)[1] == "16"
    assert final_answer_sentence("Final Answer: The final answer is $[2,5)$.")[1] == "[2,5)"  # no "I hope"
    assert final_answer_sentence("I don't know.") is None


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        # Minerva output: the sentence comes after the box, and wins
        ("$=\\boxed{16}$\n\\end{align*}\nFinal Answer: The final answer is $17$. I hope it is correct.", "17"),
        # chat output: the box comes last (inside the sentence) and wins
        ("The final answer is $\\boxed{\\dfrac{9}{7}}$.", "\\dfrac{9}{7}"),
        ("First \\boxed{2}, but actually \\boxed{3}.", "3"),
        ("no answer at all", None),
    ],
)
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("x = 5", "5"),  # right side of an equation
        ("10 inches", "10"),  # units removed
        ("1,000", "1000"),  # thousands separators, digits only
        ("\\frac12", "\\frac{1}{2}"),  # shorthand TeX
        ("\\sqrt2", "\\sqrt{2}"),
        ("$\\boxed{5}$", "5"),
        ("90^\\circ", "90"),
        ("\\text{(C)}", "(C)"),
        ("\\$18.90", "18.90"),
    ],
)
def test_minerva_normalization(raw: str, normal: str) -> None:
    assert normalize_answer(raw) == normal


EQUIVALENCES = [
    ("\\frac{1}{2}", "0.5", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)", True),
    ("x^2+1", "1+x^2", True),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2", True),
    ("10", "10.0", True),
    ("\\text{(C)}", "C", True),  # multiple-choice letter
    ("\\text{ Monday}", "Monday", True),
    ("\\text{(A), (C)}", "(A),(C)", True),  # math-verify says no; Minerva-normalized strings agree
    ("[2,5)", "[2,5]", False),  # interval ends matter
    ("2", "3", False),
    ("5", None, False),  # no extracted answer never matches
    ("5", "", False),
]


def test_string_fallback_is_needed_for_some_answers() -> None:
    from dseval.scoring.math_answers import _verify_pair

    assert not _verify_pair("\\text{(A), (C)}", "(A),(C)")


def test_answers_match_known_cases() -> None:
    assert answers_match([(gold, pred) for gold, pred, _ in EQUIVALENCES]) == [ok for _, _, ok in EQUIVALENCES]


def test_answers_match_off_the_main_thread() -> None:
    """math-verify's SIGALRM timeouts fail outside the main thread; the batch then runs in a
    worker process and must give the same verdicts."""
    box: dict[str, list[bool]] = {}
    worker = threading.Thread(target=lambda: box.update(result=answers_match([(g, p) for g, p, _ in EQUIVALENCES])))
    worker.start()
    worker.join(timeout=120)
    assert box.get("result") == [ok for _, _, ok in EQUIVALENCES]
