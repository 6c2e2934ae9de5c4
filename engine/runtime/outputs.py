"""What the engine returns: generated text and tokens, continuation scores, run statistics;
and the scoring request (a tokenized context + continuation)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from dseval.engine.runtime.sequence import TokenLogprob


@dataclass
class GenerationOutput:
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    #: "stop" (EOS, stop token or stop string) or "length" (max_tokens or context length).
    finish_reason: str


@dataclass(frozen=True)
class ScoreRequest:
    """Score ``token_ids[continuation_start:]`` given the tokens before them."""

    token_ids: tuple[int, ...]
    continuation_start: int


@dataclass
class ScoreOutput:
    logprob: float
    is_greedy: bool
    #: One per continuation token, in order.
    tokens: list[TokenLogprob]

    @property
    def token_logprobs(self) -> list[float]:
        return [t.logprob for t in self.tokens]


@dataclass
class EngineStats:
    prefill_steps: int = 0
    decode_steps: int = 0
    #: Prompt tokens pushed through the model (prefix-cache hits excluded).
    prefill_tokens: int = 0
    #: Prompt tokens taken from the prefix cache instead.
    prefix_hit_tokens: int = 0
    generated_tokens: int = 0
    #: Decode steps launched before the host had read the previous step's tokens.
    overlapped_steps: int = 0
    preemptions: int = 0
    draft_proposed: int = 0
    draft_accepted: int = 0
    seconds: float = 0.0
    #: Wall time of the steps that applied a prefill (decode) batch, host work included.
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    #: Of ``seconds``, the time the host waited for a step's sampled tokens: the GPU was busy
    #: and the host idle. A small share means the host's per-step work bounds the speed.
    wait_seconds: float = 0.0
    #: Seconds of each engine start-up phase (weights, prefill_probe, fused_moe, kv_cache).
    load_seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def timed_load(self, phase: str) -> Iterator[None]:
        """Record the block's wall time, its device work included, as ``load_seconds[phase]``."""
        start = time.perf_counter()
        yield
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.load_seconds[phase] = round(time.perf_counter() - start, 3)

    def add_step_time(self, prefill: bool, seconds: float) -> None:
        if prefill:
            self.prefill_seconds += seconds
        else:
            self.decode_seconds += seconds

    @property
    def acceptance_rate(self) -> float:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else 0.0
