"""The model backend interface and the model options every backend is built with.

Every backend answers whole lists of typed requests (see :mod:`dseval.requests`), in order.
It may compute them in any order it likes (sorted by length, continuously batched); it reports
each finished answer through ``on_result(index, result)`` as soon as it has it, so the runner
can score and persist finished documents while the rest are still running. A killed run then
loses only the requests in flight, never finished work. :mod:`dseval.backends.registry` maps a
``--model`` spec to the backend class that builds it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from dseval.errors import UserError
from dseval.requests import (
    ChatRequest,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    LoglikelihoodRollingRequest,
    LoglikelihoodRollingResult,
)

R = TypeVar("R")
OnResult = Callable[[int, R], None]


#: HTTP backends' requests in flight when neither ``concurrency`` nor ``batch_size`` is given.
HTTP_IN_FLIGHT = 32


def _option(default: object, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class BackendOptions:
    """How to run the model: every knob of every command that runs one, declared once.

    The command line builds one of these (:func:`dseval.cli_options.model_options` turns each
    field into a ``--flag`` with the help text given here) and every layer below receives it
    whole. A backend reads the knobs that concern it and ignores the rest. ``None`` means the
    backend's own default, which the backend's configuration owns and checks (the engine's:
    ``EngineConfig``, ``ParallelContext``), so no default or check is repeated up here.
    """

    batch_size: int | None = _option(None, "Most sequences the model runs at once (default: the engine's, chosen from "
                                           "free KV-cache memory; openai: requests in flight, default 32).")
    device: str | None = _option(None, "cpu or cuda (default: cuda when available).")
    dtype: str | None = _option(None, "Compute dtype: bfloat16, float16 or float32 (default: bfloat16 on GPUs, float32 on CPU).")
    speculative: str | None = _option(None, "`mtp` to decode with the MTP draft.")
    #: Data-parallel replicas, each ``world_size / dp`` ranks split by ``tp``/``ep``
    #: (see :mod:`dseval.distributed`); the harness shares the docs among replicas.
    dp: int = _option(1, "Data-parallel replicas (under torchrun).")
    tp: int = _option(1, "Tensor-parallel ranks per replica (under torchrun).")
    ep: int = _option(1, "Expert-parallel ranks per replica (under torchrun).")
    moe_comm: str | None = _option(None, "Expert-parallel exchange: all_to_all (default) or all_reduce.")
    #: The built-in engine's CUDA prefill attention (``dseval.kernels.mla_prefill``): "auto"
    #: is bf16; "fp8" rounds Q, K, V to e4m3, so a run records it as part of its identity.
    prefill_attention: str = _option("auto", "Built-in engine, CUDA: prefill attention, `auto` (bf16) or `fp8` (e4m3: "
                                             "~20% faster 128K prefill, changes numerics).")
    #: The built-in engine's token budget per step, the chunk of chunked prefill (vLLM's name).
    max_num_batched_tokens: int | None = _option(None, "Built-in engine: prompt tokens per step, the chunk of chunked "
                                                       "prefill (default: the engine's for the device). Larger chunks take "
                                                       "long prompts faster and need more memory.")

    #: HTTP backends: seconds to wait for one answer, retries of a failed request, and requests
    #: in flight (None: ``batch_size``).
    timeout: float | None = _option(None, "HTTP backends: seconds to wait for one answer (default 600).")
    max_retries: int = _option(5, "HTTP backends: retries of a failed or malformed answer.")
    concurrency: int | None = _option(None, "HTTP backends: requests in flight (default: --batch-size).")

    def in_flight(self) -> int:
        """HTTP backends' requests in flight: ``concurrency``, else ``batch_size``, else 32."""
        return self.concurrency or self.batch_size or HTTP_IN_FLIGHT

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size <= 0:  # every backend uses it (the engine's batch, openai's concurrency)
            raise UserError(f"--batch-size must be positive, got {self.batch_size}")


@dataclass(frozen=True)
class PromptToken:
    """One token of a scored prompt, as an OpenAI-style server echoes it: its text, where it
    starts in the prompt, its log-probability given the tokens before it (None for the first,
    which has nothing before it), and the most likely token at its position."""

    text: str
    offset: int
    logprob: float | None
    top_text: str | None
    top_logprob: float | None


class LiveGeneration(ABC):
    """Generation that runs continuously, for ``dseval serve``: requests join between model
    steps (one arriving mid-generation starts on the next step instead of waiting for the
    others to end), their text is handed out as it decodes, and a request nobody waits for any
    more is dropped. One thread owns it and calls every method; while :meth:`busy`, that thread
    must not call the backend's batch methods (they would run the live requests too)."""

    @abstractmethod
    def add(self, request: GenerateRequest, on_done: Callable[[GenerateResult], None],
            on_text: Callable[[str], None] | None = None) -> object:
        """Queue ``request`` (a :class:`ChatRequest` is rendered with the chat template);
        ``on_text(piece)`` gets its text piece by piece, the pieces joining to the result's
        text, then ``on_done(result)`` fires once. Returns the handle :meth:`abort` takes;
        raises :class:`UserError` for a request the model cannot take."""

    @abstractmethod
    def abort(self, handle: object) -> None:
        """Drop a request that has not finished (no callback fires) and free what it holds."""

    @abstractmethod
    def busy(self) -> bool:
        """Whether requests remain for :meth:`step`."""

    @abstractmethod
    def step(self) -> None:
        """One model step over every queued request; raises (dropping them all) if it fails."""


class ModelBackend(ABC):
    """A model that answers loglikelihood and generation requests in batches."""

    #: A short human-readable description recorded in run.json.
    description: str = ""
    #: What the ``PREFIX:ARG`` spec of this backend means, listed by ``dseval models``.
    spec_help: ClassVar[str] = ""

    @classmethod
    def from_spec(cls, arg: str, options: BackendOptions) -> ModelBackend:
        """The backend a ``--model PREFIX:ARG`` spec names (``arg`` is the part after the prefix).
        Registered backends implement it; one only ever built in code need not."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a --model spec")

    #: Content fingerprint of the weights (file name -> hash), part of the run's identity so a
    #: resume refuses other weights under the same path; None where it cannot be known (an API).
    fingerprint: dict[str, str] | None = None

    @abstractmethod
    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], on_result: OnResult[LoglikelihoodResult] | None = None
    ) -> list[LoglikelihoodResult]:
        """Answer every request, in order; call ``on_result`` as each finishes."""

    @abstractmethod
    def generate(
        self, requests: Sequence[GenerateRequest], on_result: OnResult[GenerateResult] | None = None
    ) -> list[GenerateResult]:
        """Answer every request, in order; call ``on_result`` as each finishes."""

    def loglikelihood_rolling(
        self, requests: Sequence[LoglikelihoodRollingRequest], on_result: OnResult[LoglikelihoodRollingResult] | None = None
    ) -> list[LoglikelihoodRollingResult]:
        """Answer every request, in order; call ``on_result`` as each finishes. Optional: a
        backend that cannot score whole texts refuses perplexity tasks with this error."""
        raise UserError(f"model backend {type(self).__name__} cannot score whole texts (loglikelihood_rolling)")

    def chat(self, requests: Sequence[ChatRequest], on_result: OnResult[GenerateResult] | None = None) -> list[GenerateResult]:
        """Answer chat requests, in order. The default renders each conversation with
        :meth:`apply_chat_template` and generates; backends that take messages (a chat API)
        or answer by id (``replay:``) override it."""
        return self.generate([r.rendered(self.apply_chat_template(list(r.messages))) for r in requests], on_result)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """Render a conversation into the exact prompt string the model sees, ending where the
        assistant's answer begins. Backends without a chat template refuse chat-mode tasks."""
        raise UserError(f"model backend {type(self).__name__} has no chat template; run without --chat")

    def recorded_chat(self, messages: list[dict[str, str]]) -> str:
        """What a sample records as the prompt of a chat request: the exact string the model
        sees where this backend applies the template; backends that send the messages to a
        server that applies its own record them as JSON."""
        return self.apply_chat_template(messages)

    def prompt_logprobs(self, prompt: str, completion: str = "") -> list[PromptToken]:
        """Every token of ``prompt`` and then of ``completion`` (the text generated after it)
        with its log-probability: what ``dseval serve`` answers to ``echo`` with ``logprobs``.
        Backends that cannot see token probabilities refuse."""
        raise UserError(f"model backend {type(self).__name__} cannot score prompt tokens")

    def live(self) -> LiveGeneration | None:
        """Continuous generation for ``dseval serve`` (:class:`LiveGeneration`); None where the
        backend answers whole lists only (an API, saved outputs), and the server then batches
        the requests that arrive together."""
        return None

    def stats(self) -> dict[str, Any]:
        """Running totals of the work done so far (the engine's steps, prompt and generated
        tokens, seconds in prefill and decode steps, MTP draft acceptance: what a speculative
        run's speed-up comes from). run.json keeps them per invocation and timing.json their
        growth over each task. Empty where a backend counts nothing."""
        return {}

    def close(self) -> None:
        """Release devices, worker processes or connections."""
