"""Turns a scheduled batch into model inputs, runs the model, and picks tokens.

The runner owns the paged latent KV caches (one ``[num_blocks, block_size, kv_lora_rank +
qk_rope_head_dim]`` tensor per attention layer, MTP layers included) and builds the explicit
per-step :class:`AttentionMetadata`. It computes logits only for the rows that need them (the
last row of a sequence that will sample, the prompt rows whose log-probabilities were asked
for), because the vocabulary projection dominates small-batch cost.

Decode steps copy their inputs into persistent buffers sized for ``max_num_seqs`` and hand the
model views of them, with the block-table width rounded up to a power of two: tensor addresses
and shapes then repeat from step to step, which is the precondition for capturing the decode
step in a CUDA graph (gpt-fast's static-shape decode), added by the kernels work later.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from dseval.engine.attention_metadata import AttentionMetadata
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


@dataclass
class StepOutput:
    """What one forward pass produced for each sequence of the batch (same order)."""

    hidden: torch.Tensor  # [T, hidden] before the final norm (the MTP draft needs it)
    offsets: list[int]
    #: Tokens picked at the sampled rows of each sequence (empty where nothing was sampled).
    sampled: list[list[int]] = field(default_factory=list)
    #: (position of the scored token, its log-prob, whether it was the argmax) per sequence.
    logprobs: list[list[tuple[int, float, bool]]] = field(default_factory=list)


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
    ) -> None:
        self.model = model
        self.config = config
        self.block_size = block_size
        self.device = device
        width = model.kv_cache_row_width(config)
        self.kv_caches = [
            torch.zeros(num_blocks, block_size, width, dtype=dtype, device=device)
            for _ in range(model.num_attention_layers)
        ]
        self.sampler = Sampler()
        self.max_blocks_per_seq = -(-(max_model_len + max_tokens_per_seq_decode) // block_size)
        # Persistent decode buffers (static addresses for graph capture).
        t_max = max_num_seqs * max_tokens_per_seq_decode
        self._dec_ids = torch.zeros(t_max, dtype=torch.int64, device=device)
        self._dec_pos = torch.zeros(t_max, dtype=torch.int64, device=device)
        self._dec_slots = torch.zeros(t_max, dtype=torch.int64, device=device)
        self._dec_cu = torch.zeros(max_num_seqs + 1, dtype=torch.int64, device=device)
        self._dec_ctx = torch.zeros(max_num_seqs, dtype=torch.int64, device=device)
        self._dec_tables = torch.full((max_num_seqs, self.max_blocks_per_seq), -1, dtype=torch.int64, device=device)
        self.max_num_seqs = max_num_seqs
        self.max_tokens_per_seq_decode = max_tokens_per_seq_decode

    @staticmethod
    def kv_bytes_per_block(model: DeepseekV3ForCausalLM, config: ModelConfig, block_size: int,
                           dtype: torch.dtype) -> int:
        width = model.kv_cache_row_width(config)
        return model.num_attention_layers * block_size * width * torch.empty((), dtype=dtype).element_size()

    # ------------------------------------------------------------------ inputs
    def prepare(self, rows: Seq[RowSpec], absorbed: bool, static: bool = False) -> StepInputs:
        """Flatten ``rows`` into model inputs and this step's attention metadata."""
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
            tables = torch.full((len(rows), width), -1, dtype=torch.int64)
            for i, r in enumerate(rows):
                n = min(len(r.seq.block_table), width)
                tables[i, :n] = torch.tensor(r.seq.block_table[:n], dtype=torch.int64)
            B, T = len(rows), len(ids)
            nb = self.device.type == "cuda"
            self._dec_ids[:T].copy_(torch.tensor(ids, dtype=torch.int64), non_blocking=nb)
            self._dec_pos[:T].copy_(torch.tensor(pos, dtype=torch.int64), non_blocking=nb)
            self._dec_slots[:T].copy_(torch.tensor(slots, dtype=torch.int64), non_blocking=nb)
            self._dec_cu[: B + 1].copy_(torch.tensor(offsets, dtype=torch.int64), non_blocking=nb)
            self._dec_ctx[:B].copy_(torch.tensor(ctx, dtype=torch.int64), non_blocking=nb)
            self._dec_tables[:B, :width].copy_(tables, non_blocking=nb)
            meta = AttentionMetadata(
                cu_seqlens_q=self._dec_cu[: B + 1],
                context_lens=self._dec_ctx[:B],
                block_tables=self._dec_tables[:B, :width],
                slot_mapping=self._dec_slots[:T],
                kv_caches=self.kv_caches,
                absorbed=absorbed,
            )
            return StepInputs(self._dec_ids[:T], self._dec_pos[:T], meta, offsets)
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

    # ------------------------------------------------------------------ one step
    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> StepOutput:
        """Run the main model on ``batch``; sample where a sequence needs its next token and
        score the prompt positions whose log-probabilities were requested."""
        rows: list[RowSpec] = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            tokens = seq.token_ids[start : start + n]
            if len(tokens) < n:  # decode with a speculative draft appended
                assert seq.draft_token is not None and len(tokens) == n - 1
                tokens = tokens + [seq.draft_token]
            rows.append(RowSpec(seq, start, tokens))
        inputs = self.prepare(rows, absorbed=not batch.is_prefill, static=not batch.is_prefill)
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
            idx = torch.tensor(logit_rows, dtype=torch.int64).to(dev, non_blocking=True)
            logits = self.model.compute_logits(hidden.index_select(0, idx))
            tokens = self.sampler(logits, sample_params, sample_index).tolist()
            for owner, tok in zip(sample_owner, tokens):
                out.sampled[owner].append(int(tok))
        # Prompt log-probs in slices: a [rows, vocab] float32 matrix for a whole 2k-token
        # chunk would be ~1 GB at DeepSeek-V3's vocabulary.
        for a in range(0, len(lp_rows), self.logprob_rows_per_pass):
            b = a + self.logprob_rows_per_pass
            idx = torch.tensor(lp_rows[a:b], dtype=torch.int64).to(dev, non_blocking=True)
            targets = torch.tensor(lp_targets[a:b], dtype=torch.int64).to(dev, non_blocking=True)
            lps, greedy = token_logprobs(self.model.compute_logits(hidden.index_select(0, idx)), targets)
            for (owner, p), lp, g in zip(lp_owner[a:b], lps.tolist(), greedy.tolist()):
                out.logprobs[owner].append((p, float(lp), bool(g)))
        return out
