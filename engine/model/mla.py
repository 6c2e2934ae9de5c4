"""Multi-head Latent Attention (DeepSeek-V2 §2.1, DeepSeek-V3 §2.1.1) over a paged latent cache.

Queries come from a low-rank path ``q_b(q_norm(q_a(x)))`` (or a plain ``q_proj`` when
``q_lora_rank`` is null). Keys/values are compressed to ``c_kv = kv_norm(kv_a(x)[:kv_lora_rank])``
plus one shared rotary key ``k_pe``; only ``[c_kv, k_pe]`` is cached. Two equivalent forms:

* expanded (prefill): up-project the cached latents with ``kv_b`` into per-head k_nope / v and
  attend normally;
* absorbed (decode, §2.1.2 "absorb W^UK into W^Q and W^UV into W^O"): fold kv_b's key half into
  the query and its value half into the output, so attention runs in the kv_lora_rank space and
  the cache is never expanded.

Tensor parallelism splits the heads: q_b (or q_proj) and kv_b keep their heads' rows, o_proj
their heads' columns and all-reduces. The LoRA down projections q_a / kv_a are replicated, so
every rank computes and caches the same latent rows (the cache is per rank, not split), and the
absorbed form works unchanged on the rank's head slice of kv_b.

Plain decode (one query per sequence) is one fused ``kernels.mla_decode`` call; anything else
(prefill chunks, MTP verification) loops over sequences, gathering each one's rows through its
block table: the expanded form goes to ``kernels.mla_prefill_attention`` (flash / cuDNN, or the
opt-in FP8 kernel), the absorbed form is computed here in float32.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from dseval.engine.model.attention_metadata import AttentionMetadata
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.linear import ColumnParallelLinear, Linear, RowParallelLinear
from dseval.engine.model.mla_absorbed import absorbed_decode, one_query_per_sequence
from dseval.engine.model.norm import RMSNorm
from dseval.engine.model.rope import RotaryEmbedding, softmax_scale
from dseval.engine.parallel.context import ParallelContext
from dseval.engine.parallel.sharding import local_size
from dseval.kernels.mla_prefill import mla_prefill_attention, mla_prefill_attention_varlen


def _gather_context(cache: torch.Tensor, block_table: torch.Tensor, ctx_len: int) -> torch.Tensor:
    """Cached rows [ctx_len, W] of one sequence, in position order."""
    block_size = cache.shape[1]
    n_blocks = -(-ctx_len // block_size)
    blocks = block_table[:n_blocks]
    return cache[blocks].reshape(n_blocks * block_size, cache.shape[2])[:ctx_len]  # [nb, bs, W] -> [ctx, W]


class MLAttention(nn.Module):
    """One MLA block; parameter names follow the HF checkpoint (``self_attn.*``)."""

    def __init__(
        self,
        config: ModelConfig,
        rotary: RotaryEmbedding,
        parallel: ParallelContext = ParallelContext(),  # noqa: B008 (frozen, immutable)
    ) -> None:
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.n_heads = local_size(config.num_attention_heads, parallel.tp_size, "num_attention_heads")  # heads on this rank
        self.nope = config.qk_nope_head_dim
        self.rope_dim = config.qk_rope_head_dim
        self.v_dim = config.v_head_dim
        self.kv_rank = config.kv_lora_rank
        self.scale = softmax_scale(config)
        self.rotary = rotary
        block = config.quantization.weight_block_size if config.quantization else (128, 128)
        h, qk, H = config.hidden_size, config.qk_head_dim, config.num_attention_heads
        if config.q_lora_rank is None:
            self.q_proj = ColumnParallelLinear(h, H * qk, block, parallel)
        else:
            self.q_a_proj = Linear(h, config.q_lora_rank, block)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, config.rms_norm_eps)
            self.q_b_proj = ColumnParallelLinear(config.q_lora_rank, H * qk, block, parallel)
        self.kv_a_proj_with_mqa = Linear(h, self.kv_rank + self.rope_dim, block)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, config.rms_norm_eps)
        self.kv_b_proj = ColumnParallelLinear(self.kv_rank, H * (self.nope + self.v_dim), block, parallel)
        self.o_proj = RowParallelLinear(H * self.v_dim, h, block, parallel)
        self._absorb_cache: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        return q.view(x.shape[0], self.n_heads, self.config.qk_head_dim)  # [T, H*qk] -> [T, H, qk]

    def _kv_b(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b split per head: W_UK [H, nope, C] and W_UV [H, v, C]. An FP8 kv_b is dequantized
        once and kept (it is small: kv_lora_rank x H·(nope+v)), a dense one is just viewed."""
        cached = self._absorb_cache.get(dtype)
        if cached is not None:
            return cached
        # [H*(nope+v), C] -> [H, nope+v, C]
        w = self.kv_b_proj.dense_weight(dtype).view(self.n_heads, self.nope + self.v_dim, self.kv_rank)
        split = (w[:, : self.nope], w[:, self.nope :])
        if self.kv_b_proj.is_fp8:
            self._absorb_cache[dtype] = split
        return split

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, kv_cache: torch.Tensor
    ) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; writes this step's latent rows into ``kv_cache`` first."""
        T = x.shape[0]
        q = self._queries(x)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)  # [T, H, nope], [T, H, rope]
        kv = self.kv_a_proj_with_mqa(x)
        if x.is_cuda and x.dtype == kv_cache.dtype == torch.bfloat16:
            # One launch for rotary, kv_a_layernorm and the cache write (~25 small kernels
            # otherwise); imported lazily so CPU runs never load Triton.
            from dseval.kernels.mla_rope import mla_rope_and_cache

            cos, sin = self.rotary.tables(positions)
            q_pe = mla_rope_and_cache(q, kv, positions, cos, sin, self.kv_a_layernorm.weight,
                                      self.kv_a_layernorm.eps, kv_cache, meta.slot_mapping, self.rotary.interleave)
        else:
            c_kv, k_pe = kv.split([self.kv_rank, self.rope_dim], dim=-1)  # [T, C], [T, rope]
            c_kv = self.kv_a_layernorm(c_kv)
            cos, sin = self.rotary.cos_sin(positions)
            q_pe = self.rotary.apply(q_pe, cos, sin)
            k_pe = self.rotary.apply(k_pe, cos, sin)
            width = kv_cache.shape[-1]
            kv_cache.view(-1, width)[meta.slot_mapping] = torch.cat([c_kv, k_pe], dim=-1).to(kv_cache.dtype)
        out = paged_mla(self, q_nope, q_pe, positions, meta, kv_cache)  # [T, H, v]
        return self.o_proj(out.reshape(T, self.n_heads * self.v_dim))


def _expanded(attn: MLAttention, qn: torch.Tensor, qp: torch.Tensor, rows: torch.Tensor,
              meta: AttentionMetadata) -> torch.Tensor:
    """One sequence's queries [t, H, *] (its last t positions) over its cached rows [S, C+rope]:
    per-head K/V up-projected from the latents, fused causal attention (the kernel ``meta``
    names) -> [t, H, v]."""
    latent, k_pe = rows.split([attn.kv_rank, attn.rope_dim], dim=-1)  # [S, C], [S, rope]
    kv = attn.kv_b_proj(latent).view(-1, attn.n_heads, attn.nope + attn.v_dim)  # [S, H, nope+v]
    k_nope, v = kv.split([attn.nope, attn.v_dim], dim=-1)
    return mla_prefill_attention(qn, qp, k_nope, k_pe, v, attn.scale, meta.prefill)


def _packed(attn: MLAttention, q_nope: torch.Tensor, q_pe: torch.Tensor, meta: AttentionMetadata,
            kv_cache: torch.Tensor) -> torch.Tensor:
    """:func:`_expanded` for groups of a step's sequences (per group one gather, one
    up-projection and one varlen attention call instead of one of each per sequence), and the
    latent form for the queries of sequences with few new tokens."""
    assert meta.packed is not None
    out = q_nope.new_empty(q_nope.shape[0], attn.n_heads, attn.v_dim)
    for group in meta.packed:
        rows = kv_cache.view(-1, kv_cache.shape[-1]).index_select(0, group.slots).to(q_nope.dtype)
        latent, k_pe = rows.split([attn.kv_rank, attn.rope_dim], dim=-1)  # [K, C], [K, rope]
        kv = attn.kv_b_proj(latent).view(-1, attn.n_heads, attn.nope + attn.v_dim)  # [K, H, nope+v]
        k_nope, v = kv.split([attn.nope, attn.v_dim], dim=-1)
        qn, qp = q_nope.index_select(0, group.rows), q_pe.index_select(0, group.rows)
        out.index_copy_(0, group.rows, mla_prefill_attention_varlen(qn, qp, k_nope, k_pe, v, attn.scale, group.layout))
    if meta.latent is not None:
        lat = meta.latent
        w_uk, w_uv = attn._kv_b(q_nope.dtype)
        rows_meta = replace(meta, block_tables=lat.block_tables, context_lens=lat.context_lens)
        qn, qp = q_nope.index_select(0, lat.rows), q_pe.index_select(0, lat.rows)
        out.index_copy_(0, lat.rows, absorbed_decode(qn, qp, w_uk, w_uv, attn.scale, rows_meta, kv_cache).to(out.dtype))
    return out


def paged_mla(attn: MLAttention, q_nope: torch.Tensor, q_pe: torch.Tensor, positions: torch.Tensor,
              meta: AttentionMetadata, kv_cache: torch.Tensor) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its cached rows -> [T, H, v_head_dim].

    A query at position p sees cached positions 0..p of its own sequence (cache row i holds
    position i). Scores and softmax are float32.
    """
    if one_query_per_sequence(q_nope, meta, kv_cache):  # plain decode: one fused kernels.mla_decode call
        w_uk, w_uv = attn._kv_b(q_nope.dtype)  # [H, nope, C], [H, v, C]
        return absorbed_decode(q_nope, q_pe, w_uk, w_uv, attn.scale, meta, kv_cache)
    if meta.packed is not None and not meta.absorbed:
        return _packed(attn, q_nope, q_pe, meta, kv_cache)
    dtype = q_nope.dtype
    ctx = meta.context_lens.tolist()
    cu = meta.cu_seqlens_q.tolist()
    if cu == [0, q_nope.shape[0]] and not meta.absorbed:  # one prompt's chunk: no copy into `out`
        return _expanded(attn, q_nope, q_pe, _gather_context(kv_cache, meta.block_tables[0], ctx[0]).to(dtype), meta)
    out = q_nope.new_empty(q_nope.shape[0], attn.n_heads, attn.v_dim)
    w_uk, w_uv = attn._kv_b(dtype) if meta.absorbed else (None, None)
    for b in range(len(ctx)):
        s, e = cu[b], cu[b + 1]
        if e == s:
            continue
        rows = _gather_context(kv_cache, meta.block_tables[b], ctx[b]).to(dtype)  # [S, C+rope]
        qn, qp = q_nope[s:e], q_pe[s:e]  # [t, H, nope], [t, H, rope]
        if not meta.absorbed:
            out[s:e] = _expanded(attn, qn, qp, rows, meta)
            continue
        latent, k_pe = rows.split([attn.kv_rank, attn.rope_dim], dim=-1)  # [S, C], [S, rope]
        # absorbed: attention in the latent space, W_UK folded into the query and W_UV into the output
        key_pos = torch.arange(ctx[b], device=rows.device)
        mask = key_pos[None, :] > positions[s:e, None]  # [t, S] True = future token, hidden
        q_lat = torch.einsum("thd,hdc->thc", qn, w_uk)  # [t, H, C]
        scores = torch.einsum("thc,sc->hts", q_lat.float(), latent.float())  # [H, t, S]
        scores = scores + torch.einsum("thr,sr->hts", qp.float(), k_pe.float())  # rope part, shared key
        scores = (scores * attn.scale).masked_fill(mask[None], float("-inf"))
        probs = scores.softmax(dim=-1)  # [H, t, S]
        o_lat = torch.einsum("hts,sc->thc", probs, latent.float())  # [t, H, C]
        out[s:e] = torch.einsum("thc,hvc->thv", o_lat.to(dtype), w_uv)  # [t, H, v]
    return out
