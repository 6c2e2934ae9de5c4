"""What one model step takes and gives: the rows each sequence feeds in, and the tokens and
log-probabilities that come out (on the device first, on the host once resolved).

Sampled tokens leave the device through pinned memory with an event per step
(:class:`SampledTokens`), and a decode step can take its input tokens from the previous step's
device tensor (:class:`TokenFeed`): the two halves of the engine's overlap scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dseval.engine.model.attention_metadata import AttentionMetadata
from dseval.engine.runtime.scheduler import ScheduledBatch
from dseval.engine.runtime.sequence import Sequence, TokenLogprob


@dataclass
class RowSpec:
    """The rows one sequence contributes to a forward pass: ``tokens`` at positions
    ``start, start+1, ...``."""

    seq: Sequence
    start: int
    tokens: list[int]


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    #: Offset of each RowSpec's first row in the flat batch (len = B + 1).
    offsets: list[int]


@dataclass(frozen=True)
class TokenFeed:
    """Input tokens of a decode step that are still on the device: row ``i`` of the step takes
    ``tokens[rows[i]]``, a token the step before sampled (overlap scheduling)."""

    tokens: torch.Tensor
    rows: list[int]


class SampledTokens:
    """One step's sampled tokens, on the device and on their way to the host.

    The copy into pinned host memory is enqueued right after sampling and marked by an event,
    so :meth:`tolist` waits for this step only, not for a step launched after it; meanwhile
    ``device`` can feed that next step.
    """

    def __init__(self, device_tokens: torch.Tensor, host_buffer: torch.Tensor) -> None:
        # What the next step is fed is a valid id even on a row marked non-finite (the host
        # copy keeps the mark; that request ends before the fed token counts).
        self.device = device_tokens.clamp_min(0)
        self._host = host_buffer[: device_tokens.numel()]
        self._host.copy_(device_tokens, non_blocking=True)
        self._ready: torch.cuda.Event | None = None
        if device_tokens.is_cuda:
            self._ready = torch.cuda.Event()
            self._ready.record()

    def tolist(self) -> list[int]:
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()


@dataclass
class StepOutput:
    """What one forward pass produced for each sequence of the batch (same order)."""

    hidden: torch.Tensor  # [T, hidden] before the final norm (the MTP draft needs it)
    offsets: list[int]
    #: Tokens picked at the sampled rows of each sequence (empty where nothing was sampled);
    #: filled by :meth:`resolve`.
    sampled: list[list[int]] = field(default_factory=list)
    #: (position of the scored token, its log-prob and the row's top token) per sequence.
    logprobs: list[list[tuple[int, TokenLogprob]]] = field(default_factory=list)
    #: The sampled tokens in row order, and the sequence (batch index) each row belongs to.
    tokens: SampledTokens | None = None
    token_owner: list[int] = field(default_factory=list)

    def resolve(self) -> StepOutput:
        """Wait for the sampled tokens and file them under their sequences (idempotent)."""
        if self.tokens is not None:
            for owner, tok in zip(self.token_owner, self.tokens.tolist()):
                self.sampled[owner].append(int(tok))
            self.tokens = None
        return self


@dataclass
class InflightStep:
    """A launched step whose sampled tokens the host has not applied yet."""

    batch: ScheduledBatch
    out: StepOutput
    #: Tokens per sequence when known at launch (speculative decoding resolves at once).
    new_tokens: list[list[int]] | None = None
    #: Sequences holding a placeholder for this step's token (the next step was planned).
    reserved: list[Sequence] = field(default_factory=list)
