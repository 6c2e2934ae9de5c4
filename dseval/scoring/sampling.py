"""Generation requests for one doc: greedy once, or ``--samples N`` seeded draws.

Every generation task fans a prompt out the same way, so the sampling settings used when a
task asks for several samples per doc are defined here once instead of in each task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dseval.requests import ChatRequest, GenerateRequest
from dseval.task import PromptContext, sample_seed

#: Sampling settings for ``--samples N`` with N > 1. The run configuration has no temperature
#: of its own; 0.8 / top-p 0.95 are the Codex paper's (Chen et al., 2021) settings for
#: estimating pass@k with k > 1. A single sample is always greedy, as the reference numbers are.
MULTI_SAMPLE_TEMPERATURE = 0.8
MULTI_SAMPLE_TOP_P = 0.95


@dataclass(frozen=True)
class SamplingProtocol:
    """A task's own sampling protocol from its reference (AIME 2024 in the DeepSeek-V3 report:
    16 samples at temperature 0.7), used when the run does not ask for ``--samples N > 1``."""

    samples: int
    temperature: float
    top_p: float = 1.0


def _draws(doc_id: str, ctx: PromptContext, max_tokens: int, protocol: SamplingProtocol | None) -> list[dict[str, Any]]:
    """The sampling fields of each request drawn for one doc.

    Seeds come from :func:`sample_seed` so a doc draws the same samples whatever batch or
    order it runs in, and ``doc_id``/``sample_index`` let ``replay:`` answer by id.
    """
    budget = ctx.max_tokens or max_tokens
    if ctx.samples > 1:
        n, temperature, top_p = ctx.samples, MULTI_SAMPLE_TEMPERATURE, MULTI_SAMPLE_TOP_P
    elif protocol is not None:
        n, temperature, top_p = protocol.samples, protocol.temperature, protocol.top_p
    else:
        n, temperature, top_p = 1, 0.0, 1.0
    if ctx.temperature is not None:  # the run's settings replace the task's protocol
        temperature, top_p = ctx.temperature, 1.0
    top_p = top_p if ctx.top_p is None else ctx.top_p
    return [
        {"max_tokens": budget, "temperature": temperature, "top_p": top_p, "top_k": ctx.top_k or 0,
         "seed": sample_seed(ctx.seed, doc_id, i), "doc_id": doc_id, "sample_index": i}
        for i in range(n)
    ]


def generate_requests(
    prompt: str, doc_id: str, ctx: PromptContext, stop: tuple[str, ...], max_tokens: int
) -> list[GenerateRequest]:
    """``ctx.samples`` requests for ``prompt`` (greedy for one); ``ctx.max_tokens`` overrides
    the task default."""
    return [GenerateRequest(prompt=prompt, stop=stop, **draw) for draw in _draws(doc_id, ctx, max_tokens, None)]


def chat_requests(
    messages: Sequence[dict[str, str]], doc_id: str, ctx: PromptContext, max_tokens: int,
    protocol: SamplingProtocol | None = None, stop: tuple[str, ...] = (),
) -> list[ChatRequest]:
    """The chat counterpart of :func:`generate_requests`: one conversation (given a system turn
    from ``--system-prompt`` when it has none), drawn as the run or the task's ``protocol`` says."""
    if ctx.system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": ctx.system_prompt}, *messages]
    return [ChatRequest(messages=tuple(messages), stop=stop, **draw) for draw in _draws(doc_id, ctx, max_tokens, protocol)]


def chat_prompt(
    messages: Sequence[dict[str, str]], doc_id: str, ctx: PromptContext, max_tokens: int, stop: tuple[str, ...] = (),
    protocol: SamplingProtocol | None = None,
) -> tuple[str, list[GenerateRequest]]:
    """What a chat-mode generation task's ``build`` returns: the prompt the sample records
    (:meth:`PromptContext.recorded`) and the chat requests. Tasks hand the backend messages,
    never a templated string, so ``openai:``/``openai-chat:`` servers apply their own template
    and the built-in engine the checkpoint's."""
    requests = chat_requests(messages, doc_id, ctx, max_tokens, protocol, stop)
    return ctx.recorded(list(requests[0].messages)), list[GenerateRequest](requests)
