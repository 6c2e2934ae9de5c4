"""Generations the engine ended on non-finite logits stop the run, naming the doc.

Why stop instead of scoring: an argmax over NaN logits still picks a token, so a broken model
(or broken numerics) would produce text that is scored like an answer. The engine ends such a
request with finish reason ``"nonfinite"``; this turns it into a one-line error before the
doc's sample is written (earlier samples are kept; the run resumes once the cause is fixed).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UserError
from .records import Doc

NONFINITE = "nonfinite"


def check_generations(doc: Doc, task: str, finish_reasons: Sequence[str | None]) -> None:
    bad = [i for i, reason in enumerate(finish_reasons) if reason == NONFINITE]
    if bad:
        raise UserError(f"task {task}, doc {doc.id}: the model's logits were NaN or infinite while generating "
                        f"answer {bad[0]}; check the checkpoint's weights and --dtype (samples written so far are kept)")
