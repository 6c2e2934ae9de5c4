"""Turns a scheduled batch into model inputs, runs the model, and picks tokens.

The runner owns the paged latent KV caches (one ``[num_blocks, block_size, kv_lora_rank +
qk_rope_head_dim]`` tensor per attention layer, MTP layers included) and builds the explicit
per-step :class:`AttentionMetadata`. It computes logits only for the rows that need them (the
last row of a sequence that will sample, the prompt rows whose log-probabilities were asked
for), because the vocabulary projection dominates small-batch cost.

Decode steps copy their inputs into persistent buffers sized for ``max_num_seqs`` and hand the
model views of them, with the block-table width rounded up to a power of two: tensor addresses
and shapes then repeat from step to step, which is the precondition for capturing the decode
step in a CUDA graph (gpt-fast's static-shape decode). With ``cuda_graphs`` on a CUDA device,
plain decode steps (one token per sequence) are padded to a batch bucket and replayed from
:class:`dseval.engine.cuda_graphs.DecodeGraphs`; padded rows write their latents into one
scratch cache block past ``num_blocks`` that the block manager never hands out.

Sampled tokens leave the device through pinned memory with an event per step
(:class:`SampledTokens`), and a decode step can take its input tokens from the previous step's
device tensor (:class:`TokenFeed`): the two halves of the engine's overlap scheduling.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
from dseval.engine.attention_metadata import AttentionMetadata
from dseval.engine.cuda_graphs import DecodeGraphs, graph_batch_sizes
from dseval.engine.sampler import Sampler, token_logprobs
from dseval.engine.scheduler import ScheduledBatch
from dseval.engine.sequence import SamplingParams, Sequence

if TYPE_CHECKING:
    from dseval.engine.config import ModelConfig
    from dseval.engine.model import DeepseekV3ForCausalLM


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
        self.device = device_tokens
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
    #: (position of the scored token, its log-prob, whether it was the argmax) per sequence.
    logprobs: list[list[tuple[int, float, bool]]] = field(default_factory=list)
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


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class ModelRunner:
    #: Prompt positions scored per vocabulary projection (bounds the logits' memory).
    logprob_rows_per_pass: int = 256

    def __init__(
        self,
        model: DeepseekV3ForCausalLM,
        config: ModelConfig,
        *,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device,
        dtype: torch.dtype,
        max_tokens_per_seq_decode: int = 2,
        cuda_graphs: bool = False,
        graph_sizes: Seq[int] | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.block_size = block_size
        self.device = device
        width = model.kv_cache_row_width(config)
        use_graphs = cuda_graphs and torch.device(device).type == "cuda"
        # One extra block (never allocated) takes the cache writes of graph-padding rows.
        self._scratch_slot = num_blocks * block_size
        self.kv_caches = [
            torch.zeros(num_blocks + int(use_graphs), block_size, width, dtype=dtype, device=device)
            for _ in range(model.num_attention_layers)
        ]
        self.sampler = Sampler()
        self.max_blocks_per_seq = -(-(max_model_len + max_tokens_per_seq_decode) // block_size)
        # Persistent decode buffers (static addresses for graph capture): ids, positions, slots,
        # cu_seqlens and context lengths are views of one device buffer, filled from one pinned
        # host staging buffer with a single copy per step; block tables come from a host mirror
        # that only writes the entries appended since the last step.
        t_max = max_num_seqs * max_tokens_per_seq_decode
        pin = torch.device(device).type == "cuda"
        n_all = 4 * t_max + 2 * max_num_seqs + 1
        self._dec_all = torch.zeros(n_all, dtype=torch.int64, device=device)
        self._stage = torch.zeros(n_all, dtype=torch.int64, pin_memory=pin)
        self._stage_np = self._stage.numpy()
        self._stage_done: torch.cuda.Event | None = None
        cuts = [0, t_max, 2 * t_max, 3 * t_max, 3 * t_max + max_num_seqs + 1, 3 * t_max + 2 * max_num_seqs + 1, n_all]
        # The last view holds, for a step fed by the one before (TokenFeed), which of that
        # step's sampled rows each input row takes.
        self._dec_ids, self._dec_pos, self._dec_slots, self._dec_cu, self._dec_ctx, self._dec_feed = (
            self._dec_all[a:b] for a, b in pairwise(cuts))
        self._stage_cuts = cuts
        self._dec_tables = torch.full((max_num_seqs, self.max_blocks_per_seq), -1, dtype=torch.int64, device=device)
        self._host_tables = torch.full((max_num_seqs, self.max_blocks_per_seq), -1, dtype=torch.int64,
                                       pin_memory=pin)
        self._host_tables_np = self._host_tables.numpy()
        # Per mirror row: the block-table list it mirrors (kept referenced, so identity is a
        # safe key: the block manager only ever appends to a list, and replaces it on free)
        # and how many entries were copied.
        self._mirror_of: list[list[int] | None] = [None] * max_num_seqs
        self._mirror_len = [0] * max_num_seqs
        self.max_num_seqs = max_num_seqs
        self.max_tokens_per_seq_decode = max_tokens_per_seq_decode
        # Two host buffers for sampled tokens: with overlap scheduling, a step's tokens are
        # still being read while the next step's are already being copied.
        self._token_host = [torch.zeros(t_max, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self._token_turn = 0
        self.graphs: DecodeGraphs | None = None
        self._graph_meta: AttentionMetadata | None = None
        if use_graphs:
            # Captured graphs cannot grow the rotary tables (a host sync): build them for every position now.
            model.model.rotary.reserve(max_model_len + max_tokens_per_seq_decode, torch.device(device))
            self.graphs = DecodeGraphs(self._graph_forward, graph_batch_sizes(max_num_seqs, graph_sizes))

    @staticmethod
    def kv_bytes_per_block(model: DeepseekV3ForCausalLM, config: ModelConfig, block_size: int,
                           dtype: torch.dtype) -> int:
        width = model.kv_cache_row_width(config)
        return model.num_attention_layers * block_size * width * torch.empty((), dtype=dtype).element_size()

    # ------------------------------------------------------------------ inputs
    def prepare(self, rows: Seq[RowSpec], absorbed: bool, static: bool = False, pad_to: int | None = None,
                feed: TokenFeed | None = None) -> StepInputs:
        """Flatten ``rows`` into model inputs and this step's attention metadata.

        ``static``: use the persistent decode buffers, filled by one copy from pinned memory.
        ``pad_to``: also lay out rows ``[len(rows), pad_to)`` of those buffers as inert
        padding for graph replay (token 0 at position 0, context 0 so attention writes zeros,
        cache writes into the scratch slot). ``feed``: the input tokens come from the step
        before, still on the device (gathered by row index). Both ride in the same pinned staging
        copy as the step's other inputs instead of adding host-to-device copies of their own.
        """
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        offsets = [0]
        ctx: list[int] = []
        for r in rows:
            table = r.seq.block_table
            for j, tok in enumerate(r.tokens):
                p = r.start + j
                ids.append(tok)
                pos.append(p)
                slots.append(table[p // bs] * bs + p % bs)
            offsets.append(len(ids))
            ctx.append(r.start + len(r.tokens))
        width = max(-(-c // bs) for c in ctx)
        if static and len(rows) <= self.max_num_seqs and len(ids) <= self._dec_ids.numel():
            width = min(_bucket(width), self.max_blocks_per_seq)
            B, T = len(rows), len(ids)
            pad = 0 if pad_to is None else pad_to - B
            assert pad == 0 or T == B, "graph padding is for one-token rows"
            nb = self.device.type == "cuda"
            if self._stage_done is not None:  # the previous step's copies out of the pinned buffers
                self._stage_done.synchronize()
            for i, r in enumerate(rows):
                self._mirror_row(i, r.seq.block_table, width)
            st, c = self._stage_np, self._stage_cuts
            st[c[0] : c[0] + T] = ids
            st[c[1] : c[1] + T] = pos
            st[c[2] : c[2] + T] = slots
            st[c[3] : c[3] + B + 1] = offsets
            st[c[4] : c[4] + B] = ctx
            if pad:
                st[c[0] + T : c[0] + T + pad] = 0
                st[c[1] + T : c[1] + T + pad] = 0
                st[c[2] + T : c[2] + T + pad] = self._scratch_slot
                st[c[3] + B + 1 : c[3] + B + pad + 1] = range(T + 1, T + pad + 1)
                st[c[4] + B : c[4] + B + pad] = 0
            if feed is not None:
                assert T == B == len(feed.rows), "a fed step has one token per sequence"
                st[c[5] : c[5] + T] = feed.rows
            self._dec_all.copy_(self._stage, non_blocking=nb)
            self._dec_tables[:B, :width].copy_(self._host_tables[:B, :width], non_blocking=nb)
            if nb:
                self._stage_done = torch.cuda.Event()
                self._stage_done.record()
            if feed is not None:
                torch.index_select(feed.tokens, 0, self._dec_feed[:T], out=self._dec_ids[:T])
            meta = AttentionMetadata(
                cu_seqlens_q=self._dec_cu[: B + 1],
                context_lens=self._dec_ctx[:B],
                block_tables=self._dec_tables[:B, :width],
                slot_mapping=self._dec_slots[:T],
                kv_caches=self.kv_caches,
                absorbed=absorbed,
            )
            return StepInputs(self._dec_ids[:T], self._dec_pos[:T], meta, offsets)
        assert feed is None and pad_to is None, "fed and padded steps use the static buffers"
        tables = torch.full((len(rows), width), -1, dtype=torch.int64)
        for i, r in enumerate(rows):
            n = min(len(r.seq.block_table), width)  # a rejected draft may have left a spare block
            tables[i, :n] = torch.tensor(r.seq.block_table[:n], dtype=torch.int64)

        def dev(x: list[int] | torch.Tensor) -> torch.Tensor:
            t = x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.int64)
            return t.to(self.device, non_blocking=True)

        meta = AttentionMetadata(
            cu_seqlens_q=dev(offsets),
            context_lens=dev(ctx),
            block_tables=dev(tables),
            slot_mapping=dev(slots),
            kv_caches=self.kv_caches,
            absorbed=absorbed,
        )
        return StepInputs(dev(ids), dev(pos), meta, offsets)

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

    # ------------------------------------------------------------------ CUDA graphs
    def _graph_forward(self) -> torch.Tensor:
        meta = self._graph_meta
        assert meta is not None
        n = meta.num_seqs
        return self.model(self._dec_ids[:n], self._dec_pos[:n], meta)

    def _graph_bucket(self, batch: ScheduledBatch) -> int | None:
        """The padded batch size a decode step replays at, or None to run it eagerly."""
        if self.graphs is None or batch.is_prefill or any(n != 1 for n in batch.num_new_tokens):
            return None
        return self.graphs.bucket(len(batch.seqs))

    def _run_graph(self, inputs: StepInputs, bucket: int) -> torch.Tensor:
        """Replay the graph of ``bucket`` rows; ``prepare(..., pad_to=bucket)`` laid them out."""
        assert self.graphs is not None
        n = inputs.meta.num_seqs
        width = int(inputs.meta.block_tables.shape[1])
        self._graph_meta = AttentionMetadata(
            cu_seqlens_q=self._dec_cu[: bucket + 1],
            context_lens=self._dec_ctx[:bucket],
            block_tables=self._dec_tables[:bucket, :width],
            slot_mapping=self._dec_slots[:bucket],
            kv_caches=self.kv_caches,
            absorbed=True,
        )
        return self.graphs.run((bucket, width))[:n]

    # ------------------------------------------------------------------ one step
    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, feed: TokenFeed | None = None, defer: bool = False) -> StepOutput:
        """Run the main model on ``batch``; sample where a sequence needs its next token and
        score the prompt positions whose log-probabilities were requested.

        ``feed``: the decode step's input tokens are the previous step's sampled tokens, still
        on the device (the sequences hold placeholders for them). ``defer``: return before the
        sampled tokens reach the host; :meth:`StepOutput.resolve` waits for them. Together they
        let the engine launch step N+1 while the host has yet to read step N.
        """
        rows: list[RowSpec] = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            tokens = seq.token_ids[start : start + n]
            if len(tokens) < n:  # decode with a speculative draft appended
                assert seq.draft_token is not None and len(tokens) == n - 1
                tokens = tokens + [seq.draft_token]
            rows.append(RowSpec(seq, start, tokens))
        bucket = self._graph_bucket(batch)
        inputs = self.prepare(rows, absorbed=not batch.is_prefill, static=not batch.is_prefill, pad_to=bucket,
                              feed=feed)
        if bucket is not None:
            hidden = self._run_graph(inputs, bucket)
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)

        # Which rows need logits, and what for.
        logit_rows: list[int] = []
        sample_params: list[SamplingParams] = []
        sample_index: list[int] = []
        sample_owner: list[int] = []
        lp_rows: list[int] = []
        lp_targets: list[int] = []
        lp_owner: list[tuple[int, int]] = []
        for i, r in enumerate(rows):
            base = inputs.offsets[i]
            seq = r.seq
            if batch.is_prefill:
                for j in range(len(r.tokens)):
                    p = r.start + j
                    if seq.needs_logits_at(p):
                        lp_rows.append(base + j)
                        lp_targets.append(seq.token_ids[p + 1])
                        lp_owner.append((i, p + 1))
                if r.start + len(r.tokens) == len(seq) and seq.num_output_tokens < seq.params.max_tokens:
                    logit_rows.append(base + len(r.tokens) - 1)
                    sample_params.append(seq.params)
                    sample_index.append(seq.num_output_tokens)
                    sample_owner.append(i)
            else:
                for j in range(len(r.tokens)):
                    logit_rows.append(base + j)
                    sample_params.append(seq.params)
                    sample_index.append(seq.num_output_tokens + j)
                    sample_owner.append(i)

        out = StepOutput(hidden=hidden, offsets=inputs.offsets,
                         sampled=[[] for _ in rows], logprobs=[[] for _ in rows])
        dev = hidden.device
        if logit_rows:
            if len(logit_rows) == hidden.shape[0]:  # decode: every row, in order (rows are unique)
                logits = self.model.compute_logits(hidden)
            else:
                idx = torch.tensor(logit_rows, dtype=torch.int64).to(dev, non_blocking=True)
                logits = self.model.compute_logits(hidden.index_select(0, idx))
            host = self._token_host[self._token_turn]
            self._token_turn ^= 1
            out.tokens = SampledTokens(self.sampler(logits, sample_params, sample_index), host)
            out.token_owner = sample_owner
        # Prompt log-probs in slices: a [rows, vocab] float32 matrix for a whole 2k-token
        # chunk would be ~1 GB at DeepSeek-V3's vocabulary.
        for a in range(0, len(lp_rows), self.logprob_rows_per_pass):
            b = a + self.logprob_rows_per_pass
            idx = torch.tensor(lp_rows[a:b], dtype=torch.int64).to(dev, non_blocking=True)
            targets = torch.tensor(lp_targets[a:b], dtype=torch.int64).to(dev, non_blocking=True)
            lps, greedy = token_logprobs(self.model.compute_logits(hidden.index_select(0, idx)), targets)
            for (owner, p), lp, g in zip(lp_owner[a:b], lps.tolist(), greedy.tolist()):
                out.logprobs[owner].append((p, float(lp), bool(g)))
        return out if defer else out.resolve()
