"""The model backend interface and the registry that maps a ``--model`` spec to a backend.

Every backend answers whole lists of typed requests (see :mod:`dseval.requests`), in order.
It may compute them in any order it likes (sorted by length, continuously batched); it reports
each finished answer through ``on_result(index, result)`` as soon as it has it, so the runner
can score and persist finished documents while the rest are still running. A killed run then
loses only the requests in flight, never finished work.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dseval.errors import UserError
from dseval.requests import ChatRequest, GenerateRequest, GenerateResult, LoglikelihoodRequest, LoglikelihoodResult

R = TypeVar("R")
OnResult = Callable[[int, R], None]


@dataclass(frozen=True)
class BackendOptions:
    """Run-level options a backend may use; unknown ones are ignored by backends they don't concern."""

    batch_size: int = 32
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    speculative: str | None = None
    #: Tensor- and expert-parallel degrees inside one model replica (see dseval.distributed).
    tp: int = 1
    ep: int = 1
    #: How expert-parallel ranks exchange tokens: "all_to_all" dispatch or the reference
    #: code's "all_reduce" (every rank runs its experts on all tokens).
    moe_comm: str = "all_to_all"
    #: The built-in engine's CUDA prefill attention (dseval.kernels.mla_prefill.PREFILL_BACKENDS).
    prefill_attention: str = "auto"
    #: The built-in engine's token budget per step, i.e. the chunk size of chunked prefill
    #: (vLLM's --max-num-batched-tokens); None: the engine's default for the device.
    max_num_batched_tokens: int | None = None


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


class ModelBackend(ABC):
    """A model that answers loglikelihood and generation requests in batches."""

    #: A short human-readable description recorded in run.json.
    description: str = ""

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

    def chat(self, requests: Sequence[ChatRequest], on_result: OnResult[GenerateResult] | None = None) -> list[GenerateResult]:
        """Answer chat requests, in order. The default renders each conversation with
        :meth:`apply_chat_template` and generates; backends that take messages (a chat API)
        or answer by id (``replay:``) override it."""
        return self.generate([r.rendered(self.apply_chat_template(list(r.messages))) for r in requests], on_result)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """Render a conversation into the exact prompt string the model sees, ending where the
        assistant's answer begins. Backends without a chat template refuse chat-mode tasks."""
        raise UserError(f"model backend {type(self).__name__} has no chat template; run without --chat")

    def prompt_logprobs(self, prompt: str, completion: str = "") -> list[PromptToken]:
        """Every token of ``prompt`` and then of ``completion`` (the text generated after it)
        with its log-probability: what ``dseval serve`` answers to ``echo`` with ``logprobs``.
        Backends that cannot see token probabilities refuse."""
        raise UserError(f"model backend {type(self).__name__} cannot score prompt tokens")

    def close(self) -> None:
        """Release devices, worker processes or connections."""


# spec prefix -> "module:factory"; the factory takes (argument, BackendOptions).
# Lazy import paths keep `dseval tasks` and `replay:` runs free of torch start-up cost.
_BACKENDS: dict[str, str] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_backend(prefix: str, target: str, description: str) -> None:
    """Make ``prefix:ARG`` specs build a backend through ``target`` ("module:callable")."""
    _BACKENDS[prefix] = target
    _DESCRIPTIONS[prefix] = description


def backend_kinds() -> dict[str, str]:
    """Registered spec prefixes and what they load."""
    return dict(_DESCRIPTIONS)


def _factory(prefix: str) -> Callable[[str, BackendOptions], ModelBackend]:
    module_name, path = _BACKENDS[prefix].split(":")
    target: Any = importlib.import_module(module_name)
    for attr in path.split("."):
        target = getattr(target, attr)
    return target


def load_backend(spec: str, options: BackendOptions) -> ModelBackend:
    """Build the backend a ``--model`` spec names.

    ``PREFIX:ARG`` picks a registered backend; anything else is a checkpoint folder or a preset
    name for the built-in engine.
    """
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in _BACKENDS:
        return _factory(prefix)(arg, options)
    if sep and not Path(spec).exists():
        kinds = ", ".join(f"{p}:..." for p in _BACKENDS)
        raise UserError(f"unknown model spec {spec!r}: {prefix!r} is not a backend kind ({kinds}) nor a folder")
    # A checkpoint folder or a preset name: the engine says which presets exist if neither.
    return _factory("engine")(spec, options)


register_backend("replay", "dseval.backends.replay:ReplayBackend.from_spec", "answers generation requests from a JSONL file of {id, output}")
register_backend("engine", "dseval.backends.engine:EngineBackend.from_spec", "built-in DeepSeek-V3 engine: a checkpoint folder or a preset name (tiny)")
register_backend("openai", "dseval.backends.openai_api:OpenAIBackend.from_spec", "an OpenAI-compatible completions endpoint (vLLM, SGLang, ...): openai:URL#MODEL")
register_backend("openai-chat", "dseval.backends.openai_chat:OpenAIChatBackend.from_spec", "an OpenAI-compatible chat endpoint (chat tasks, judges): openai-chat:URL[#MODEL]")
