"""Reasoning blocks in chat answers: DeepSeek-R1-style models think in ``<think>...</think>``
before they answer, and scorers must read the answer, not the thinking (a number or a code block
inside the reasoning would otherwise be extracted)."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def strip_reasoning(text: str) -> str:
    """``text`` without its leading reasoning block.

    ``<think>...</think>answer`` gives ``answer``; a block that never closes (the token limit
    cut it) leaves no answer; ``...</think>answer`` with no opening tag (chat templates that
    write ``<think>`` into the prompt) gives ``answer``. Text without a block is unchanged.
    """
    body = text.lstrip()
    if body.startswith(OPEN):
        end = body.find(CLOSE)
        return "" if end < 0 else body[end + len(CLOSE):].lstrip()
    if OPEN not in text and CLOSE in text:
        return text[text.find(CLOSE) + len(CLOSE):].lstrip()
    return text
