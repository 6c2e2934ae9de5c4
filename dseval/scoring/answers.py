"""Final answers of chain-of-thought outputs: the phrase that introduces them, and numbers.

BBH and GSM8K exemplars both end their reasoning with a fixed sentence ("So the answer is
(B)." / "The answer is 18."), so a model imitating them puts its answer after that phrase.
Reading it, and comparing numbers by value rather than by spelling ("1,000" = "1000.00"),
lives here once for every task that prompts that way.
"""

from __future__ import annotations

import re
from fractions import Fraction

# A number as written in answers: optional sign and $, thousands commas, decimals.
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def answer_after(text: str, phrase: str) -> str | None:
    """The rest of the line after the first ``phrase`` (case-insensitive), without its final
    full stop, as lm-evaluation-harness's ``(?<=the answer is )(.*)(?=.)`` filter reads it;
    None when the phrase is absent."""
    match = re.search(re.escape(phrase) + r"[ \t]*([^\n]*)", text, re.IGNORECASE)
    if match is None:
        return None
    answer = match.group(1).strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def numbers(text: str) -> list[str]:
    """The numbers written in ``text``, in order: the first one after an answer phrase is the
    answer, the last one of a whole output is the fallback when the phrase is missing."""
    return _NUMBER.findall(text)


def number_value(text: str) -> Fraction | None:
    """The exact value of a written number ("$1,000.50" -> 2001/2), None if it is not one."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def same_number(a: str | None, b: str | None) -> bool:
    """Whether two written numbers have the same value (exactly, as fractions)."""
    if a is None or b is None:
        return False
    va, vb = number_value(a), number_value(b)
    return va is not None and va == vb
