"""Exact match and F1 of DROP (Dua et al., 2019), as the official evaluation script defines them.

An answer is one span or a list of spans. Each span is normalized token by token (tokens split
on spaces and hyphens): lowercased, punctuation removed unless the token is a number, numbers
rewritten as floats (so "1,000", "1000" and "1000.0" all agree), articles removed, whitespace
collapsed. Then:

* **EM** is 1 when the predicted and gold spans are the same set of normalized strings (and the
  same count).
* **F1** treats each span as a bag (set) of tokens. Predicted and gold bags are paired one to
  one by the assignment that maximizes total F1 (``scipy.optimize.linear_sum_assignment``); a
  pair whose gold bag holds numbers none of which appear in the predicted bag scores 0. The
  answer's F1 is the mean over max(#gold, #predicted) bags (unpaired bags score 0), rounded to
  two decimals.
* Against several gold answers, EM and F1 are each the maximum over the golds.

Scores are on the 0-1 scale of the official script (simple-evals multiplies F1 by 100).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

Answer = str | Sequence[str]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _normalize_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCTUATION)
    if _is_number(token):
        token = str(float(token))
    return " ".join(_ARTICLES.sub(" ", token).split())


def normalize_span(span: str) -> str:
    """One span in the official normal form, e.g. ``"The 1,000-yard Run."`` -> ``"1000.0 yard run"``."""
    parts = (_normalize_token(token) for token in re.split(" |-", span))
    return " ".join(part for part in parts if part.strip()).strip()


def _spans_and_bags(answer: Answer) -> tuple[list[str], list[set[str]]]:
    spans = [answer] if isinstance(answer, str) else list(answer)
    normalized = [normalize_span(span) for span in spans]
    return normalized, [set(span.split()) for span in normalized]


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
    overlap = len(predicted & gold)
    precision = overlap / len(predicted) if predicted else 1.0
    recall = overlap / len(gold) if gold else 1.0
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], predicted: set[str]) -> bool:
    """A gold bag with numbers needs at least one of them in the predicted bag."""
    gold_numbers = {t for t in gold if _is_number(t)}
    return not gold_numbers or bool(gold_numbers & {t for t in predicted if _is_number(t)})


def _aligned_f1(predicted: list[set[str]], gold: list[set[str]]) -> float:
    scores = np.zeros((len(gold), len(predicted)))
    for g, gold_bag in enumerate(gold):
        for p, predicted_bag in enumerate(predicted):
            if _numbers_agree(gold_bag, predicted_bag):
                scores[g, p] = _bag_f1(predicted_bag, gold_bag)
    rows, cols = linear_sum_assignment(-scores)
    per_bag = np.zeros(max(len(gold), len(predicted)))
    for row, col in zip(rows, cols):
        per_bag[row] = max(per_bag[row], scores[row, col])
    return float(np.mean(per_bag))


def em_f1(predicted: Answer, gold: Answer) -> tuple[float, float]:
    """EM and F1 of one prediction against one gold answer (each a span or list of spans)."""
    predicted_spans, predicted_bags = _spans_and_bags(predicted)
    gold_spans, gold_bags = _spans_and_bags(gold)
    exact = float(set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans))
    return exact, round(_aligned_f1(predicted_bags, gold_bags), 2)


def best_em_f1(predicted: Answer, golds: Sequence[Answer]) -> tuple[float, float]:
    """EM and F1 against several gold answers: each the maximum over the (non-empty) golds."""
    scored = [em_f1(predicted, gold) for gold in golds if (gold.strip() if isinstance(gold, str) else gold)]
    if not scored:
        raise ValueError("DROP item has no non-empty gold answer")
    return max(em for em, _ in scored), max(f1 for _, f1 in scored)
