"""Turns a scheduled batch into model inputs, runs the model, and picks tokens.

The runner owns the paged latent KV caches (one ``[num_blocks, block_size, kv_lora_rank +
qk_rope_head_dim]`` tensor per attention layer, MTP layers included) and builds the explicit
per-step :class:`AttentionMetadata`. It computes logits only for the rows that need them (the
last row of a sequence that will sample, the prompt rows whose log-probabilities were asked
for), because the vocabulary projection dominates small-batch cost.

Decode steps copy their inputs into persistent buffers sized for ``max_num_seqs``
(:class:`dseval.engine.runtime.decode_buffers.DecodeBuffers`) and hand the model views of them,
so tensor addresses and shapes repeat from step to step. With ``cuda_graphs`` on a CUDA device,
plain decode steps (one token per sequence) are padded to a batch bucket and replayed from
:class:`dseval.engine.runtime.cuda_graphs.DecodeGraphs`; padded rows write their latents into one
scratch cache block past ``num_blocks`` that the block manager never hands out.

Sampled tokens leave the device through pinned memory with an event per step
(:class:`~dseval.engine.runtime.step.SampledTokens`), and a decode step can take its input
tokens from the previous step's device tensor (:class:`~dseval.engine.runtime.step.TokenFeed`):
the two halves of the engine's overlap scheduling.
"""

from __future__ import annotations

import time
from collections.abc import Sequence as Seq

import numpy as np
import torch

from dseval.engine.model.attention_metadata import AttentionMetadata, LatentRows, PackedContext
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.model import DeepseekV3ForCausalLM
from dseval.engine.runtime.cuda_graphs import DecodeGraphs, graph_batch_sizes
from dseval.engine.runtime.decode_buffers import DecodeBuffers, StepLayout, context_slots, latent_layout, query_rows
from dseval.engine.runtime.sampler import Sampler, token_logprobs
from dseval.engine.runtime.scheduler import ScheduledBatch
from dseval.engine.runtime.sequence import SamplingParams, TokenLogprob
from dseval.engine.runtime.step import RowSpec, SampledTokens, StepInputs, StepOutput, TokenFeed
from dseval.kernels.mla_prefill import PrefillAttention, VarlenLayout


class ModelRunner:
    #: Prompt positions scored per vocabulary projection (bounds the logits' memory).
    logprob_rows_per_pass: int = 256
    #: Most context rows a prefill step gathers at once for the varlen attention (each expands
    #: to H * (nope + v) values per layer); a step over more attends sequence by sequence.
    packed_context_rows: int = 1 << 15
    #: Prefill sequences with at most this many new tokens attend in the latent form (as decode
    #: rows) within a packed step: their cached context is not expanded per head.
    latent_max_tokens: int = 16

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
        prefill_attention: PrefillAttention = PrefillAttention(),  # noqa: B008 (frozen)
    ) -> None:
        self.model = model
        self.config = config
        self.block_size = block_size
        self.device = torch.device(device)
        self.prefill_attention = prefill_attention
        width = model.kv_cache_row_width(config)
        use_graphs = cuda_graphs and self.device.type == "cuda"
        # One extra block (never allocated) takes the cache writes of graph-padding rows.
        self.kv_caches = [
            torch.zeros(num_blocks + int(use_graphs), block_size, width, dtype=dtype, device=device)
            for _ in range(model.num_attention_layers)
        ]
        self.sampler = Sampler()
        #: Seconds the host has waited for the device's results (sampled tokens, log-probs).
        self.wait_seconds = 0.0
        # Sizes derived from the context limit stop at what the KV cache can hold: no sequence
        # outgrows it, whatever max_position_embeddings says (issue 23).
        max_model_len = min(max_model_len, num_blocks * block_size)
        self.max_blocks_per_seq = -(-(max_model_len + max_tokens_per_seq_decode) // block_size)
        self.buffers = DecodeBuffers(max_num_seqs, max_tokens_per_seq_decode, self.max_blocks_per_seq,
                                     num_blocks * block_size, self.device)
        # Two host buffers for sampled tokens: with overlap scheduling, a step's tokens are
        # still being read while the next step's are already being copied.
        t_max = max_num_seqs * max_tokens_per_seq_decode
        pin = self.device.type == "cuda"
        self._token_host = [torch.zeros(t_max, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self._token_turn = 0
        self.graphs: DecodeGraphs | None = None
        self._graph_meta: AttentionMetadata | None = None
        if use_graphs:
            # Captured graphs cannot grow the rotary tables (a host sync): build them for every position now.
            model.model.rotary.reserve(max_model_len + max_tokens_per_seq_decode, self.device)
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
        step = self.layout(rows)
        B, T = len(rows), len(step.ids)
        width = max(-(-c // self.block_size) for c in step.ctx)
        if static and self.buffers.fits(B, T):
            buf = self.buffers
            width = buf.fill(step, width, 0 if pad_to is None else pad_to - B,
                             None if feed is None else feed.tokens, None if feed is None else feed.rows)
            meta = buf.metadata(B, T, width, self.kv_caches, absorbed, self.prefill_attention)
            return StepInputs(buf.ids[:T], buf.pos[:T], meta, step.offsets)
        assert feed is None and pad_to is None, "fed and padded steps use the static buffers"
        tables = torch.full((B, width), -1, dtype=torch.int64)
        for i, table in enumerate(step.tables):
            n = min(len(table), width)  # a rejected draft may have left a spare block
            tables[i, :n] = torch.tensor(table[:n], dtype=torch.int64)

        def dev(x: list[int] | torch.Tensor) -> torch.Tensor:
            t = x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.int64)
            return t.to(self.device, non_blocking=True)

        packed, latent = self.pack(step) if not absorbed and B > 1 and self.prefill_attention.varlen else (None, None)
        meta = AttentionMetadata(
            packed=packed,
            latent=latent,
            cu_seqlens_q=dev(step.offsets),
            context_lens=dev(step.ctx),
            block_tables=dev(tables),
            slot_mapping=dev(step.slots),
            kv_caches=self.kv_caches,
            absorbed=absorbed,
            prefill=self.prefill_attention,
        )
        return StepInputs(dev(step.ids), dev(step.pos), meta, step.offsets)

    def pack(self, step: StepLayout) -> tuple[list[PackedContext], LatentRows | None]:
        """Sequences with at most ``latent_max_tokens`` new tokens as latent (decode-form) rows;
        the others in consecutive groups of at most ``packed_context_rows`` context rows (a
        longer sequence alone), each with its context slots and varlen layout."""
        def dev(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device, non_blocking=True)

        new = [b - a for a, b in zip(step.offsets, step.offsets[1:])]
        short = [i for i, n in enumerate(new) if n <= self.latent_max_tokens]
        groups: list[list[int]] = [[]]
        size = 0
        for i in (i for i, n in enumerate(new) if n > self.latent_max_tokens):
            if groups[-1] and size + step.ctx[i] > self.packed_context_rows:
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += step.ctx[i]
        packed = [PackedContext(dev(np.concatenate([context_slots(step.tables[i], 0, step.ctx[i], self.block_size)
                                                    for i in g])),
                                VarlenLayout.build([new[i] for i in g], [step.ctx[i] for i in g], self.device),
                                dev(query_rows(step, g))) for g in groups if g]
        return packed, LatentRows(*map(dev, latent_layout(step, short, self.block_size))) if short else None

    def layout(self, rows: Seq[RowSpec]) -> StepLayout:
        """``rows`` flattened: one entry per token, then per sequence."""
        bs = self.block_size
        step = StepLayout([], [], [], [0], [], [r.seq.block_table for r in rows])
        for r in rows:
            table, n = r.seq.block_table, len(r.tokens)
            step.ids.extend(r.tokens)
            step.pos.extend(range(r.start, r.start + n))
            if n > 1:  # a prompt chunk: thousands of tokens, vectorised
                step.slots.extend(context_slots(table, r.start, r.start + n, bs).tolist())
            else:
                step.slots.extend(table[p // bs] * bs + p % bs for p in range(r.start, r.start + n))
            step.offsets.append(len(step.ids))
            step.ctx.append(r.start + len(r.tokens))
        return step

    # ------------------------------------------------------------------ CUDA graphs
    def _graph_forward(self) -> torch.Tensor:
        meta = self._graph_meta
        assert meta is not None
        n = meta.num_seqs
        return self.model(self.buffers.ids[:n], self.buffers.pos[:n], meta)

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
        self._graph_meta = self.buffers.metadata(bucket, bucket, width, self.kv_caches, True, self.prefill_attention)
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
        # chunk would be ~1 GB at DeepSeek-V3's vocabulary. Every slice is launched before
        # any is read, so the host waits for the device once per step.
        slices = []
        for a in range(0, len(lp_rows), self.logprob_rows_per_pass):
            b = a + self.logprob_rows_per_pass
            idx = torch.tensor(lp_rows[a:b], dtype=torch.int64).to(dev, non_blocking=True)
            targets = torch.tensor(lp_targets[a:b], dtype=torch.int64).to(dev, non_blocking=True)
            slices.append(token_logprobs(self.model.compute_logits(hidden.index_select(0, idx)), targets))
        if slices:
            waited = time.perf_counter()
            lps, greedy, top_lps, top_ids = (torch.cat(parts).tolist() for parts in zip(*slices))
            self.wait_seconds += time.perf_counter() - waited
            for (owner, p), lp, g, tlp, tid in zip(lp_owner, lps, greedy, top_lps, top_ids):
                out.logprobs[owner].append((p, TokenLogprob(float(lp), bool(g), int(tid), float(tlp))))
        return out if defer else out.resolve()
