"""Per-request state of the serving runtime: sampling parameters and one :class:`Sequence`.

A sequence is the only place that knows how far a request has got: which tokens it holds,
how many of them already have KV in the paged cache, which cache blocks it owns, which
positions need log-probabilities, and why it stopped. The scheduler, block manager and
model runner read and advance this state; they keep none of their own per request, so a
preempted request can be resumed from its sequence alone.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import NamedTuple

from dseval.engine.errors import ConfigError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next tokens of one request, and when to stop.

    ``temperature`` 0 is greedy decoding. Sampling randomness is derived from ``seed`` and the
    index of the generated token only (see :mod:`dseval.engine.runtime.sampler`), so the same seed
    gives the same tokens whatever else shares the batch and across preemption.
    ``max_tokens`` 0 means "prefill only" (scoring).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # Errors name the field: these come straight from task configs and CLI flags.
        if self.temperature < 0:
            raise ConfigError(f"sampling field 'temperature' must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"sampling field 'top_p' must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"sampling field 'top_k' must be >= 0 (0 = off), got {self.top_k}")
        if self.max_tokens < 0:
            raise ConfigError(f"sampling field 'max_tokens' must be >= 0, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ConfigError("sampling field 'stop' must not contain an empty string")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class TokenLogprob(NamedTuple):
    """A scored prompt token: its log-probability, whether it was the greedy choice, and the
    position's top token with its log-probability."""

    logprob: float
    is_greedy: bool
    top_id: int
    top_logprob: float


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()

#: Stands in for a token that a step in flight is sampling (overlap scheduling); never fed to
#: the model (the runner takes the real token from the device) and never committed to the
#: prefix cache (it is replaced before the sequence's blocks are committed; a pending-prefix
#: announcement that includes it can match no real prompt, token ids being >= 0).
PENDING_TOKEN = -1


@dataclass(eq=False)
class Sequence:
    """One request moving through the engine.

    Invariants: ``num_computed_tokens <= len(token_ids)``; the KV of tokens
    ``[0, num_computed_tokens)`` is in the blocks of ``block_table``; the first
    ``num_prompt_tokens`` tokens are the prompt, the rest were generated.
    """

    token_ids: list[int]
    params: SamplingParams
    #: Log-probabilities are wanted for tokens at positions ``>= logprob_start`` (each is
    #: scored by the logits at the position before it), so ``logprob_start >= 1``. ``None``
    #: means no prompt logprobs (plain generation).
    logprob_start: int | None = None
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    #: Tokens that came from the prefix cache on the latest admission (for statistics).
    num_prefix_hit_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    #: Leading blocks of ``block_table`` already registered in the prefix cache (hashed).
    num_hashed_blocks: int = 0
    #: Chain hashes of the prompt's leading full blocks, computed once: a prompt never changes,
    #: and a waiting sequence is looked up again on every step it waits.
    prompt_block_hashes: list[bytes] = field(default_factory=list)
    num_prompt_tokens: int = 0
    #: Per scored position: the actual token's log-prob, and the position's top token.
    prompt_logprobs: dict[int, TokenLogprob] = field(default_factory=dict)
    #: Speculative decoding: the MTP draft for the token after the last one, if any.
    draft_token: int | None = None
    finish_reason: str | None = None
    #: Decoded output, cut at a stop string once one is found.
    output_text: str = ""
    #: Index of the caller's request this sequence answers.
    request_index: int = 0

    def __post_init__(self) -> None:
        if not self.token_ids:
            raise ValueError("a sequence needs at least one token (prepend BOS to an empty prompt)")
        self.token_ids = list(self.token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        if self.logprob_start is not None and not 1 <= self.logprob_start <= len(self.token_ids):
            raise ValueError(f"logprob_start {self.logprob_start} outside [1, {len(self.token_ids)}]")

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def in_prefill(self) -> bool:
        """True while some known tokens other than the newest one still lack KV.

        During decode exactly one token (the last sampled) is uncomputed; anything more means
        a prompt (or a preempted sequence being recomputed) is still being prefilled.
        """
        return len(self.token_ids) - self.num_computed_tokens > 1 or self.num_computed_tokens == 0

    @property
    def max_prefix_hit_tokens(self) -> int:
        """Most tokens the prefix cache may supply.

        At least one token must be computed to get the logits that pick the next token, and
        every position whose logits are needed for prompt logprobs must be computed too.
        """
        limit = len(self.token_ids) - 1
        if self.logprob_start is not None:
            limit = min(limit, self.logprob_start - 1)
        return max(limit, 0)

    def needs_logits_at(self, position: int) -> bool:
        """Whether the logits at ``position`` are needed for a prompt logprob."""
        return self.logprob_start is not None and self.logprob_start - 1 <= position < self.num_prompt_tokens - 1

    def reserve_token(self) -> None:
        """Count the token the step in flight is sampling as present and computed-to-be, so
        the next decode step (its position and cache slot) can be planned before it is known."""
        self.token_ids.append(PENDING_TOKEN)
        self.num_computed_tokens += 1

    def release_token(self) -> None:
        """Undo :meth:`reserve_token` once the real token is known (the engine then appends it)."""
        assert self.token_ids[-1] == PENDING_TOKEN, "no placeholder to release"
        self.token_ids.pop()
        self.num_computed_tokens -= 1

    def reset_for_recompute(self) -> None:
        """Forget the cache state after preemption; tokens (prompt and generated) are kept and
        recomputed on resume, so greedy and seeded outputs are unchanged."""
        self.num_computed_tokens = 0
        self.block_table = []
        self.num_hashed_blocks = 0
        self.draft_token = None
        self.status = SequenceStatus.WAITING
