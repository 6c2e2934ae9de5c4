"""Which sequences run in the next model step, and how many tokens each.

Policy (continuous batching, prefill first): a step is either a *prefill* step, which pushes
prompt tokens of new or partially prefilled sequences through the model under a token budget
(long prompts are split into chunks across steps), or a *decode* step, which advances every
running sequence by one token (plus its speculative draft, if any). Prefill first keeps the
batch full; decode steps have a fixed shape per sequence, which is what CUDA graphs want.

When the cache cannot hold the next decode token of every running sequence, the most
recently admitted ones are preempted: their blocks are freed and they go back to the front of
the waiting queue keeping their tokens, to be recomputed (cheaply, through the prefix cache)
when room returns. Sampling randomness depends only on (seed, token index), so a preempted
request produces the same tokens as one that never was.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dseval.engine.errors import RequestError
from dseval.engine.runtime.block_manager import BlockManager
from dseval.engine.runtime.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's share of :class:`EngineConfig` (defaults and validation live there)."""

    max_num_seqs: int
    #: Token budget of one prefill step (sum of the chunks of all its sequences).
    max_num_batched_tokens: int
    #: Split prompts longer than the remaining budget across steps.
    chunked_prefill: bool


@dataclass
class ScheduledBatch:
    """One step's work: ``num_new_tokens[i]`` tokens of ``seqs[i]`` starting at its
    ``num_computed_tokens``."""

    is_prefill: bool
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        cache_tokens = self.block_manager.num_blocks * self.block_manager.block_size
        if len(seq) + seq.params.max_tokens + 1 > cache_tokens:
            raise RequestError(
                f"request of {len(seq)} prompt tokens + max_tokens {seq.params.max_tokens} cannot fit "
                f"the KV cache of {cache_tokens} tokens; raise the engine's 'num_kv_blocks'"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Release a finished sequence's blocks."""
        seq.status = SequenceStatus.FINISHED
        self.running.remove(seq)
        self.block_manager.free(seq)

    def abort(self, seq: Sequence) -> None:
        """Drop ``seq`` whether it runs or waits (its caller is gone), freeing its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.finish(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
            seq.status = SequenceStatus.FINISHED

    def abort_all(self) -> None:
        """Drop every sequence: after a failed step, none may keep holding blocks."""
        for seq in list(self.running):
            self.finish(seq)
        self.waiting.clear()

    # ------------------------------------------------------------------ scheduling
    def schedule(self) -> ScheduledBatch:
        batch = self._schedule_prefill()
        if batch:
            return batch
        return self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch:
        bm = self.block_manager
        budget = self.config.max_num_batched_tokens
        batch = ScheduledBatch(is_prefill=True)

        # Sequences already admitted but not fully prefilled continue first (their blocks are held).
        for seq in list(self.running):  # a copy: making room may preempt others
            if budget <= 0:
                break
            if seq.status is not SequenceStatus.RUNNING or not seq.in_prefill:
                continue
            chunk = self._chunk(len(seq) - seq.num_computed_tokens, budget, bool(batch))
            if chunk == 0:
                continue
            if not self._make_room(seq, seq.num_computed_tokens + chunk):
                continue
            bm.ensure_slots(seq, seq.num_computed_tokens + chunk)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(chunk)
            budget -= chunk

        # Then new sequences, first come first served; those whose prefix is being computed
        # by another sequence right now wait a step so it is computed once.
        deferred: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            lookup = bm.lookup_prefix(seq)
            if lookup.pending:
                deferred.append(self.waiting.popleft())
                continue
            hit_tokens = len(lookup.block_ids) * bm.block_size
            chunk = self._chunk(len(seq) - hit_tokens, budget, bool(batch))
            if chunk == 0:
                break
            # Reusing a cached block that sits on the free list takes it off the free list.
            reused_free = sum(1 for b in lookup.block_ids if bm.blocks[b].ref_count == 0)
            need = -(-(hit_tokens + chunk) // bm.block_size) - len(lookup.block_ids)
            if need > bm.num_free_blocks - reused_free:
                break
            self.waiting.popleft()
            bm.admit(seq, lookup)
            bm.ensure_slots(seq, hit_tokens + chunk)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(chunk)
            budget -= chunk
        self.waiting.extendleft(reversed(deferred))
        return self._drop_preempted(batch)

    def _chunk(self, remaining: int, budget: int, batch_has_work: bool) -> int:
        """Tokens of a prompt to prefill now. Without chunking, a prompt goes whole or waits;
        alone in a step it may exceed the budget, or it would never run."""
        if self.config.chunked_prefill:
            return min(remaining, budget)
        return remaining if remaining <= budget or not batch_has_work else 0

    @staticmethod
    def _drop_preempted(batch: ScheduledBatch) -> ScheduledBatch:
        """Sequences preempted (to make room for a later one) after being put in the batch
        must not run."""
        keep = [i for i, s in enumerate(batch.seqs) if s.status is SequenceStatus.RUNNING]
        batch.seqs = [batch.seqs[i] for i in keep]
        batch.num_new_tokens = [batch.num_new_tokens[i] for i in keep]
        return batch

    def _schedule_decode(self) -> ScheduledBatch:
        bm = self.block_manager
        batch = ScheduledBatch(is_prefill=False)
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING or seq.in_prefill:
                continue  # preempted earlier in this loop, or still waiting for prefill room
            num_new = 1 if seq.draft_token is None else 2
            if not self._make_room(seq, seq.num_computed_tokens + num_new):
                if seq.draft_token is not None:
                    seq.draft_token = None  # drop the draft before giving up the sequence
                    num_new = 1
                if not bm.can_allocate(seq, seq.num_computed_tokens + num_new):
                    self._preempt(seq)
                    continue
            bm.ensure_slots(seq, seq.num_computed_tokens + num_new)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
        return self._drop_preempted(batch)

    def schedule_next_decode(self, seqs: list[Sequence]) -> ScheduledBatch | None:
        """The decode step after the one in flight, planned before its tokens reach the host
        (overlap scheduling): one token for each of ``seqs``, the running sequences that will
        still run unless they stop on the token in flight.

        Each gets a placeholder for that token (:meth:`Sequence.reserve_token`) and a cache
        slot for it. None when the regular schedule could differ: a waiting request could be
        admitted (prefill goes first), or room would have to be made by preemption; those
        decisions wait until the tokens are known.
        """
        if self.waiting and len(self.running) < self.config.max_num_seqs:
            return None
        bm = self.block_manager
        # A sequence decoding position p (computed == p) next decodes p + 1: slots for p + 2 tokens.
        if sum(bm.blocks_needed(s, s.num_computed_tokens + 2) for s in seqs) > bm.num_free_blocks:
            return None
        batch = ScheduledBatch(is_prefill=False)
        for seq in seqs:
            seq.reserve_token()
            bm.ensure_slots(seq, seq.num_computed_tokens + 1)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(1)
        return batch

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Preempt newer sequences until ``seq`` has room for ``num_tokens`` tokens; whether it now has."""
        while not self.block_manager.can_allocate(seq, num_tokens):
            victim = self._newer_victim(seq)
            if victim is None:
                return False
            self._preempt(victim)
        return True

    def _newer_victim(self, seq: Sequence) -> Sequence | None:
        """The most recently admitted running sequence if it was admitted after ``seq``:
        room is taken from the newest work, never from older work for newer work."""
        newest = self.running[-1] if self.running else None
        return newest if newest is not None and newest is not seq else None

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
