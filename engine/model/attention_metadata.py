"""Per-step attention layout shared by the model runner and the model (the runtime contract).

One engine step flattens the new tokens of B sequences into T rows; the MLA cache stores, per
token, the compressed latent (DeepSeek-V2 §2.1.2) followed by the rotated decoupled key
(§2.1.3): ``kv_lora_rank + qk_rope_head_dim`` values per row, in fixed-size blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dseval.kernels.mla_prefill import PrefillAttention, VarlenLayout


@dataclass(frozen=True)
class PackedContext:
    """The cached context rows of a group of a step's consecutive sequences, in sequence order,
    and where each sequence's queries and context sit; built on the host once per step."""

    slots: torch.Tensor  # [sum of the group's context_lens] int64, cache slot of every context row
    layout: VarlenLayout
    rows: torch.Tensor  # [the group's new tokens] int64, the queries' rows in the step's flat tokens


@dataclass(frozen=True)
class LatentRows:
    """Queries of a prefill step's sequences with few new tokens (a loglikelihood choice after
    its shared context), attended in the absorbed (latent) form as decode rows are: one row per
    query, each with its own block table and context length (its position + 1). Expanding
    such a sequence's whole cached context per head costs far more than its few queries need."""

    rows: torch.Tensor  # [N] int64, the queries' rows in the step's flat tokens
    block_tables: torch.Tensor  # [N, width] int64 (pad -1)
    context_lens: torch.Tensor  # [N] int64


@dataclass
class AttentionMetadata:
    """Layout of one engine step: the new tokens of B sequences flattened into T rows."""

    cu_seqlens_q: torch.Tensor  # [B+1] int64, offsets of each sequence's new tokens in the flat batch
    context_lens: torch.Tensor  # [B] int64, tokens in the cache for each sequence AFTER this step (cached + new)
    block_tables: torch.Tensor  # [B, max_blocks] int64 (pad -1), the sequence's cache blocks in order
    slot_mapping: torch.Tensor  # [T] int64, cache slot (block * block_size + offset) for each new token's latent KV
    # one per attention layer (main layers then MTP layers): [num_blocks, block_size, kv_lora_rank + qk_rope_head_dim]
    kv_caches: list[torch.Tensor]
    absorbed: bool  # weight-absorbed (latent-space) attention form; the runner sets it for decode steps
    #: Which CUDA kernel computes prefill attention; resolved once when the engine starts.
    prefill: PrefillAttention = PrefillAttention()  # noqa: RUF009 (frozen)
    #: Set by the runner on prefill steps of several sequences: the sequences in groups, each
    #: group's context gathered and attended at once (one varlen call per group and layer, no
    #: host syncs); groups bound the gathered rows' memory.
    packed: list[PackedContext] | None = None
    #: With ``packed``: the queries that take the latent form instead (never in a group).
    latent: LatentRows | None = None

    @property
    def num_seqs(self) -> int:
        return int(self.context_lens.shape[0])
