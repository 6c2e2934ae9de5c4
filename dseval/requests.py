"""Typed request and response kinds: the contract between tasks and model backends.

A task never calls a model per example. It turns each document into requests of one of three
kinds (loglikelihood, generate, and chat: a generation whose prompt is a conversation), the runner hands the whole list of each kind to the backend in one call, and the
backend answers in the same order. Keeping the kinds as small frozen dataclasses (never bare
tuples whose meaning depends on a flag) lets a backend sort by length, share prefixes and
batch continuously without knowing anything about the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``continuation`` given ``context``.

    Token boundary rule (as lm-evaluation-harness): the backend encodes ``context +
    continuation`` as one string and counts as continuation the tokens past the encoding of
    ``context`` alone; whitespace at the end of ``context`` is moved to the front of
    ``continuation`` first, so " A" after "Answer:" is scored as the token " A", never as a
    lone space followed by "A". An empty context is scored after the BOS token.
    """

    context: str
    continuation: str


@dataclass(frozen=True)
class LoglikelihoodResult:
    """Sum of the continuation's token log-probabilities and whether greedy decoding
    would have produced exactly those tokens."""

    logprob: float
    is_greedy: bool


@dataclass(frozen=True)
class GenerateRequest:
    """Generate a completion of ``prompt``.

    ``stop`` strings cut the output at the first occurrence of any of them, and the stop
    string itself is not returned. ``max_tokens`` bounds the new tokens. ``temperature`` 0
    means greedy; otherwise sampling uses ``top_p``/``top_k`` with ``seed``, so the same
    seed gives the same text whatever else is in the batch.
    """

    prompt: str
    stop: tuple[str, ...] = ()
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    # The id of the document this request belongs to; backends that answer from saved
    # outputs (``replay:``) use it, the engine ignores it.
    doc_id: str = ""
    sample_index: int = 0


@dataclass(frozen=True)
class ChatRequest(GenerateRequest):
    """Generate the assistant's next turn of ``messages`` (``{"role", "content"}`` dicts, in
    order; system first where there is one). ``prompt`` is unused: the backend renders the
    conversation itself (the built-in engine with the checkpoint's chat template, an
    ``openai-chat:`` server with its own), so a chat run works through any backend and
    ``replay:`` answers it by id. The sampling fields mean what they mean for
    :class:`GenerateRequest`.
    """

    prompt: str = ""
    messages: tuple[dict[str, str], ...] = ()

    def rendered(self, prompt: str) -> GenerateRequest:
        """The plain generate request for this conversation rendered as ``prompt``."""
        settings = {f.name: getattr(self, f.name) for f in fields(GenerateRequest)}
        return GenerateRequest(**{**settings, "prompt": prompt})


@dataclass(frozen=True)
class GenerateResult:
    """The generated text (stop string removed) and the number of tokens it took."""

    text: str
    num_tokens: int = 0
    finish_reason: str = field(default="stop")
