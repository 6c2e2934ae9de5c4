"""Few-shot selection shared by the task files.

Every few-shot task takes the first ``--shots`` exemplars of a fixed list (the reference prompt's
own, in its order) and must refuse a count above what the reference has, in the same words, so
the check lives here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from dseval.errors import UserError

T = TypeVar("T")


def take_shots(exemplars: Sequence[T], shots: int, source: str) -> list[T]:
    """The first ``shots`` of ``exemplars``; ``source`` names them in the error ("the Minerva
    prompt") when there are fewer."""
    if shots > len(exemplars):
        raise UserError(f"{source} has {len(exemplars)} exemplar(s); --shots {shots} is too many")
    return list(exemplars[:shots])
