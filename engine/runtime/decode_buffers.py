"""Persistent decode-step inputs at static device addresses: the precondition for replaying a
decode step from a CUDA graph (gpt-fast's static-shape decode).

Token ids, positions, cache slots, ``cu_seqlens`` and context lengths of a step are views of one
device buffer, filled from one pinned host staging buffer by a single copy per step. Block
tables come from a pinned host mirror that only writes the entries appended since the last
step, with the table width rounded up to a power of two so shapes repeat from step to step.
Graph padding rows and the input tokens of a step fed by the step before (overlap scheduling)
ride in the same staging copy instead of adding host-to-device copies of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from dseval.engine.model.attention_metadata import AttentionMetadata
from dseval.kernels.mla_prefill import PrefillAttention


@dataclass(frozen=True)
class StepLayout:
    """One step's flattened inputs on the host: per token (``ids``, ``pos``, ``slots``), per
    sequence (``offsets`` into the tokens, B + 1 of them; ``ctx``, the context length after the
    step) and the block tables of the sequences."""

    ids: list[int]
    pos: list[int]
    slots: list[int]
    offsets: list[int]
    ctx: list[int]
    tables: list[list[int]]


def context_slots(table: list[int], start: int, end: int, block_size: int) -> np.ndarray:
    """Cache slots (int64) of positions ``[start, end)`` of the sequence with block ``table``."""
    pos = np.arange(start, end, dtype=np.int64)
    blocks = np.asarray(table[: -(-end // block_size)], dtype=np.int64)
    return blocks[pos // block_size] * block_size + pos % block_size


def query_rows(step: StepLayout, seqs: list[int]) -> np.ndarray:
    """Rows (int64) of the new tokens of sequences ``seqs`` in the step's flat tokens."""
    return np.concatenate([np.arange(step.offsets[i], step.offsets[i + 1], dtype=np.int64) for i in seqs])


def latent_layout(step: StepLayout, seqs: list[int], block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The new tokens of ``seqs`` as decode rows: their rows, block tables (-1 padded) and context
    lengths (a query at position p attends to positions 0..p)."""
    new = [step.offsets[i + 1] - step.offsets[i] for i in seqs]
    ctx = np.concatenate([np.arange(step.ctx[i] - n + 1, step.ctx[i] + 1, dtype=np.int64) for i, n in zip(seqs, new)])
    tables = np.full((len(ctx), -(-max(step.ctx[i] for i in seqs) // block_size)), -1, dtype=np.int64)
    r = 0
    for i, n in zip(seqs, new):
        blocks = -(-step.ctx[i] // block_size)
        tables[r : r + n, :blocks] = step.tables[i][:blocks]
        r += n
    return query_rows(step, seqs), tables, ctx


def round_up_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class DecodeBuffers:
    """Static-address inputs of decode steps of up to ``max_num_seqs`` sequences of up to
    ``tokens_per_seq`` new tokens each (2 with a speculative draft)."""

    def __init__(self, max_num_seqs: int, tokens_per_seq: int, max_blocks_per_seq: int, scratch_slot: int,
                 device: torch.device) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_blocks_per_seq = max_blocks_per_seq
        #: Cache slot of the block no sequence owns: graph-padding rows write their latents there.
        self.scratch_slot = scratch_slot
        self.device = device
        t_max = max_num_seqs * tokens_per_seq
        self.max_tokens = t_max
        pin = device.type == "cuda"
        n_all = 4 * t_max + 2 * max_num_seqs + 1
        self._all = torch.zeros(n_all, dtype=torch.int64, device=device)
        self._stage = torch.zeros(n_all, dtype=torch.int64, pin_memory=pin)
        self._stage_np = self._stage.numpy()
        self._stage_done: torch.cuda.Event | None = None
        cuts = [0, t_max, 2 * t_max, 3 * t_max, 3 * t_max + max_num_seqs + 1, 3 * t_max + 2 * max_num_seqs + 1, n_all]
        # The last view holds, for a step fed by the one before, which of that step's sampled
        # rows each input row takes.
        self.ids, self.pos, self.slots, self.cu, self.ctx, self.feed = (self._all[a:b] for a, b in pairwise(cuts))
        self._cuts = cuts
        self.tables = torch.full((max_num_seqs, max_blocks_per_seq), -1, dtype=torch.int64, device=device)
        self._host_tables = torch.full((max_num_seqs, max_blocks_per_seq), -1, dtype=torch.int64, pin_memory=pin)
        self._host_tables_np = self._host_tables.numpy()
        # Per mirror row: the block-table list it mirrors (kept referenced, so identity is a
        # safe key: the block manager only ever appends to a list, and replaces it on free)
        # and how many entries were copied.
        self._mirror_of: list[list[int] | None] = [None] * max_num_seqs
        self._mirror_len = [0] * max_num_seqs

    def fits(self, num_seqs: int, num_tokens: int) -> bool:
        return num_seqs <= self.max_num_seqs and num_tokens <= self.max_tokens

    def fill(self, step: StepLayout, width: int, pad: int = 0, feed_tokens: torch.Tensor | None = None,
             feed_rows: list[int] | None = None) -> int:
        """Copy ``step`` into the buffers; returns the block-table width used (``width`` rounded
        up to a power of two). ``pad`` inert rows follow the real ones (token 0 at position 0,
        context 0 so attention writes zeros, cache writes into the scratch slot). With
        ``feed_tokens``, input row i takes ``feed_tokens[feed_rows[i]]`` on the device."""
        width = min(round_up_pow2(width), self.max_blocks_per_seq)
        B, T = len(step.ctx), len(step.ids)
        assert pad == 0 or T == B, "graph padding is for one-token rows"
        nb = self.device.type == "cuda"
        if self._stage_done is not None:  # the previous step's copies out of the pinned buffers
            self._stage_done.synchronize()
        for i, table in enumerate(step.tables):
            self._mirror_row(i, table, width)
        st, c = self._stage_np, self._cuts
        st[c[0] : c[0] + T] = step.ids
        st[c[1] : c[1] + T] = step.pos
        st[c[2] : c[2] + T] = step.slots
        st[c[3] : c[3] + B + 1] = step.offsets
        st[c[4] : c[4] + B] = step.ctx
        if pad:
            st[c[0] + T : c[0] + T + pad] = 0
            st[c[1] + T : c[1] + T + pad] = 0
            st[c[2] + T : c[2] + T + pad] = self.scratch_slot
            st[c[3] + B + 1 : c[3] + B + pad + 1] = range(T + 1, T + pad + 1)
            st[c[4] + B : c[4] + B + pad] = 0
        if feed_rows is not None:
            assert T == B == len(feed_rows), "a fed step has one token per sequence"
            st[c[5] : c[5] + T] = feed_rows
        self._all.copy_(self._stage, non_blocking=nb)
        self.tables[:B, :width].copy_(self._host_tables[:B, :width], non_blocking=nb)
        if nb:
            self._stage_done = torch.cuda.Event()
            self._stage_done.record()
        if feed_tokens is not None:
            torch.index_select(feed_tokens, 0, self.feed[:T], out=self.ids[:T])
        return width

    def metadata(self, num_seqs: int, num_tokens: int, width: int, kv_caches: list[torch.Tensor], absorbed: bool,
                 prefill: PrefillAttention) -> AttentionMetadata:
        """Views of the first ``num_seqs`` sequences' (``num_tokens`` tokens') metadata."""
        return AttentionMetadata(
            cu_seqlens_q=self.cu[: num_seqs + 1],
            context_lens=self.ctx[:num_seqs],
            block_tables=self.tables[:num_seqs, :width],
            slot_mapping=self.slots[:num_tokens],
            kv_caches=kv_caches,
            absorbed=absorbed,
            prefill=prefill,
        )

    def _mirror_row(self, i: int, table: list[int], width: int) -> None:
        """Row ``i`` of the host block-table mirror := ``table[:width]`` (-1 padded), writing
        only the entries appended since this row last mirrored the same list."""
        n = min(len(table), width)
        row = self._host_tables_np[i]
        if self._mirror_of[i] is table and self._mirror_len[i] <= n:
            done = self._mirror_len[i]
            if n > done:
                row[done:n] = table[done:n]
        else:
            row[:n] = table[:n]
            row[n:] = -1
            self._mirror_of[i] = table
        self._mirror_len[i] = n
