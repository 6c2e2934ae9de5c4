"""Paged KV-cache blocks: allocation, reference counts and a hash-chained prefix cache.

The cache is a pool of fixed-size blocks; a sequence's block table maps its token positions
to blocks, so sequences of any length share one pool without fragmentation. A block that is
full and whose KV has been computed gets a content hash chained from its predecessor's hash
(so equal hashes mean equal *prefixes*, not just equal blocks). A new sequence whose leading
full blocks hash equal reuses them by bumping their reference count instead of recomputing
them: the shared context of a multiple-choice question is prefilled once for all choices.

Only full blocks are ever shared, and nothing writes into a full block, so shared blocks need
no copy-on-write. Freed blocks keep their hash and stay findable until the pool reuses them,
least recently freed first, which makes the free list an LRU cache of old prefixes.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

from dseval.engine.runtime.sequence import Sequence

BlockHash = bytes


def chain_hash(parent: BlockHash | None, token_ids: list[int]) -> BlockHash:
    """Hash of a block given its parent's hash: equal only for equal whole prefixes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"\0" * 16)
    h.update(array("q", token_ids).tobytes())  # int64 per token, in one C call (hashed per block of every request)
    return h.digest()


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    #: Set once the block is full and its KV computed; then it may be shared.
    hash: BlockHash | None = None
    #: Kept with the hash so that a (astronomically unlikely) hash collision is not a hit.
    token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class PrefixLookup:
    """What the prefix cache could give a waiting sequence right now."""

    block_ids: list[int]
    #: A later block of this prefix is being computed by another running sequence: waiting
    #: for it (a step or two) saves recomputing it.
    pending: bool


@dataclass
class CacheStats:
    lookups: int = 0
    hit_blocks: int = 0
    allocated_blocks: int = 0
    evicted_blocks: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class BlockManager:
    """Owns the block pool; all block bookkeeping of sequences goes through here."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Insertion order = free order; popping from the front reuses the least recently freed.
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[BlockHash, int] = {}
        # Hashes of full prompt blocks whose KV is being computed right now, -> block id.
        self._pending: dict[BlockHash, int] = {}
        self._pending_of: dict[int, BlockHash] = {}
        # The sequence hashed last: the next one usually shares its leading blocks (a
        # question's choices, a subject's few-shot header), whose hashes are then copied.
        self._last_hashed: Sequence | None = None
        self.stats = CacheStats()

    # ------------------------------------------------------------------ queries
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Extra blocks ``seq`` needs so that its first ``num_tokens`` positions have slots."""
        need = -(-num_tokens // self.block_size)
        return max(0, need - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free_blocks

    def block_hash(self, seq: Sequence, i: int, parent: BlockHash | None) -> BlockHash:
        """Chain hash of ``seq``'s full block ``i`` (``parent``: block ``i - 1``'s). The
        hashes of all full prompt blocks are computed on the first call, once per sequence, and
        copied from the sequence hashed before where both agree on every token up to the
        block's end (equal chains, equal tokens)."""
        bs = self.block_size
        if (i + 1) * bs > seq.num_prompt_tokens:  # holds generated tokens: hashed once, at commit
            return chain_hash(parent, seq.token_ids[i * bs : (i + 1) * bs])
        hashes, prev = seq.prompt_block_hashes, self._last_hashed
        if hashes:
            return hashes[i]
        while len(hashes) < seq.num_prompt_tokens // bs:
            j = len(hashes)
            tokens = seq.token_ids[j * bs : (j + 1) * bs]
            if (prev is not None and j < len(prev.prompt_block_hashes)
                    and (j == 0 or prev.prompt_block_hashes[j - 1] == hashes[j - 1])
                    and prev.token_ids[j * bs : (j + 1) * bs] == tokens):
                hashes.append(prev.prompt_block_hashes[j])
            else:
                hashes.append(chain_hash(hashes[j - 1] if j else None, tokens))
        self._last_hashed = seq
        return hashes[i]

    def lookup_prefix(self, seq: Sequence) -> PrefixLookup:
        """Walk the hash chain of ``seq``'s leading full blocks through the cache."""
        if not self.enable_prefix_cache:
            return PrefixLookup([], False)
        hits: list[int] = []
        parent: BlockHash | None = None
        bs, cached, blocks, tokens = self.block_size, self._cached, self.blocks, seq.token_ids
        for i in range(seq.max_prefix_hit_tokens // bs):
            h = self.block_hash(seq, i, parent)
            block_id = cached.get(h)
            if block_id is not None and blocks[block_id].token_ids == tokens[i * bs : (i + 1) * bs]:
                hits.append(block_id)
                parent = h
                continue
            return PrefixLookup(hits, h in self._pending)
        return PrefixLookup(hits, False)

    # ------------------------------------------------------------------ mutations
    def admit(self, seq: Sequence, lookup: PrefixLookup) -> None:
        """Give a waiting sequence (empty block table) the blocks the prefix cache found."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        for block_id in lookup.block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                self._free.pop(block_id)
            block.ref_count += 1
            seq.block_table.append(block_id)
        seq.num_computed_tokens = len(lookup.block_ids) * self.block_size
        seq.num_hashed_blocks = len(lookup.block_ids)
        seq.num_prefix_hit_tokens = seq.num_computed_tokens
        self.stats.lookups += 1
        self.stats.hit_blocks += len(lookup.block_ids)

    def ensure_slots(self, seq: Sequence, num_tokens: int) -> None:
        """Allocate blocks so positions ``[0, num_tokens)`` of ``seq`` have cache slots.

        Callers check :meth:`can_allocate` first; running out here is a scheduler bug.
        """
        new = self.blocks_needed(seq, num_tokens)
        for _ in range(new):
            if not self._free:
                raise RuntimeError("KV cache exhausted: the scheduler must preempt before allocating")
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None:
                if self._cached.get(block.hash) == block_id:
                    del self._cached[block.hash]
                    self.stats.evicted_blocks += 1
                block.hash, block.token_ids = None, []
            block.ref_count = 1
            seq.block_table.append(block_id)
            self.stats.allocated_blocks += 1
        if new:
            self._mark_pending(seq)

    def _mark_pending(self, seq: Sequence) -> None:
        """Announce the hashes of full prompt blocks that are about to be computed, so that
        sequences sharing the prefix wait for them instead of computing them again."""
        if not self.enable_prefix_cache:
            return
        bs = self.block_size
        first = seq.num_hashed_blocks
        parent = self.blocks[seq.block_table[first - 1]].hash if first else None
        for i in range(first, len(seq.block_table)):
            if (i + 1) * bs > len(seq.token_ids):
                break
            block_id = seq.block_table[i]
            h = self.block_hash(seq, i, parent)
            if h not in self._cached and h not in self._pending:
                self._pending[h] = block_id
                self._pending_of[block_id] = h
            parent = h

    def commit(self, seq: Sequence) -> None:
        """Register every block of ``seq`` that is full and computed in the prefix cache.

        Called after each model step, because a block's hash may only be published once its
        KV is actually in the cache.
        """
        if not self.enable_prefix_cache:
            return
        bs = self.block_size
        first = seq.num_hashed_blocks  # blocks before this one are registered already
        parent = self.blocks[seq.block_table[first - 1]].hash if first else None
        for i in range(first, len(seq.block_table)):
            if (i + 1) * bs > seq.num_computed_tokens:
                break
            block_id = seq.block_table[i]
            block = self.blocks[block_id]
            if block.hash is None:
                block.hash = self.block_hash(seq, i, parent)
                block.token_ids = seq.token_ids[i * bs : (i + 1) * bs]
                self._withdraw_pending(block_id)
                # A twin computed in the same step keeps the first registration.
                self._cached.setdefault(block.hash, block_id)
            parent = block.hash
            seq.num_hashed_blocks = i + 1

    def _withdraw_pending(self, block_id: int) -> None:
        h = self._pending_of.pop(block_id, None)
        if h is not None and self._pending.get(h) == block_id:
            del self._pending[h]

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s references; blocks nobody uses go to the back of the free list."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                if block.hash is None:
                    self._withdraw_pending(block_id)  # never completed
                self._free[block_id] = None
        seq.block_table = []
        seq.num_hashed_blocks = 0
