"""MLA (multi-head latent attention) decode in absorbed form over a paged latent cache.

DeepSeek-V3 caches, per token and layer, one compressed KV vector ``c_kv`` (kv_lora_rank
= 512) and the shared RoPE key ``k_pe`` (64), stored side by side as one row of 576.
With ``W_UK`` absorbed into the query and ``W_UV`` applied after attention, every head
attends over the *same* rows:

    score[h, t] = scale * (q_nope_absorbed[h] . c_kv[t] + q_pe[h] . k_pe[t])
    out[h]      = sum_t softmax_t(score[h]) * c_kv[t]            (latent space, 512)

so decode reads the cache once per (sequence, head group) and is bandwidth-bound when
few heads share the read (tensor-parallel shards), compute-bound near 128 heads
(2*H*(576+512) FLOP per 1152 cache bytes: ~242 FLOP/B at H=128 vs the H200 bf16 ridge of
~180 FLOP/B, so 128 heads cannot reach the bandwidth roofline on this chip).

Split-KV ("flash-decoding"): each (sequence, head group, split) program walks its slice
of the context in BLOCK_N-token chunks, gathering rows through ``block_tables`` (any
``block_size``), with an fp32 online softmax (exp2 domain), and writes its normalised
partial output plus its log-sum-exp; a second kernel merges all splits of a (sequence,
head) in one vectorised step.
Splits beyond a sequence's length write ``lse = -inf`` and are ignored by the merge.
No host synchronisation: the split size comes from the static capacity of
``block_tables`` (or the caller's ``max_context_len`` hint).

Dtypes/layouts:
    q_nope:        bf16 ``[B, H, 512]`` (any strides, last dim contiguous)
    q_pe:          bf16 ``[B, H, 64]``
    kv_cache:      bf16 ``[num_blocks, block_size, 576]`` (``[..., :512]`` = c_kv,
                   ``[..., 512:]`` = k_pe), last dim contiguous
    block_tables:  int32/int64 ``[B, max_blocks]``
    context_lens:  int32/int64 ``[B]`` (0 allowed: output is zeros)
    output:        bf16 ``[B, H, 512]``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .fp8_quant import HAS_TRITON, interpret_mode, triton_available_for

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["MlaDecodeConfig", "default_mla_config", "mla_decode", "mla_decode_torch"]

_LOG2E: float = 1.4426950408889634
# Split-count heuristic (_default_splits): from SHORT_CONTEXT tokens on, splits of at
# least MIN_SPLIT_TOKENS tokens, at most MAX_SPLITS of them. Shorter contexts keep the
# earlier rule: splits of at least SHORT_MIN_SPLIT_TOKENS, at most SHORT_MAX_SPLITS,
# finer (down to SHORT_SPLIT_TOKENS) while that fills at most one wave.
MIN_SPLIT_TOKENS: int = 128
MAX_SPLITS: int = 256
SHORT_CONTEXT: int = 4096
SHORT_MIN_SPLIT_TOKENS: int = 256
SHORT_MAX_SPLITS: int = 128
SHORT_SPLIT_TOKENS: int = 64


@dataclass(frozen=True)
class MlaDecodeConfig:
    """``block_h`` heads per program (>= 16 for tl.dot), ``block_n`` tokens per step,
    ``num_splits`` KV splits per sequence (None: heuristic)."""

    block_h: int = 16
    block_n: int = 32
    num_splits: int | None = None
    num_warps: int = 4
    num_stages: int = 2
    page_aligned: bool | None = None  # None: auto (block_size % block_n == 0)
    # tokens x heads orientation (tokens on the MMA M side, for wgmma); needs block_n >= 16
    transposed: bool = False


def mla_decode_torch(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    sm_scale: float,
    kv_lora_rank: int | None = None,
) -> torch.Tensor:
    """Reference/fallback in fp32 torch (loops over the batch; syncs on context_lens)."""
    b, h, lat = q_nope.shape
    lat = kv_lora_rank or lat
    bs = kv_cache.shape[1]
    out = torch.zeros(b, h, lat, dtype=torch.float32, device=q_nope.device)
    for i in range(b):
        n = int(context_lens[i])
        if n == 0:
            continue
        nb = math.ceil(n / bs)
        rows = kv_cache[block_tables[i, :nb].long()].reshape(nb * bs, -1)[:n].float()
        s = q_nope[i].float() @ rows[:, :lat].t() + q_pe[i].float() @ rows[:, lat:].t()
        p = torch.softmax(s * sm_scale, dim=-1)
        out[i] = p @ rows[:, :lat]
    return out.to(q_nope.dtype)


if HAS_TRITON:

    # The split length and the split-count strides are not specialised: their value class
    # (== 1, % 16) changes nothing in the code but would compile one variant per class.
    @triton.jit(do_not_specialize=["split_len", "stride_mlb", "stride_mlh"])
    def _mla_decode_split_kernel(
        qn_ptr, qp_ptr, kv_ptr, bt_ptr, len_ptr, mid_o_ptr, mid_lse_ptr,
        H, split_len, qk_scale,
        stride_qnb, stride_qnh, stride_qpb, stride_qph,
        stride_kvb, stride_kvt, stride_btb,
        stride_mob, stride_moh, stride_mos,
        stride_mlb, stride_mlh,
        BLOCK_SIZE: tl.constexpr,
        LAT: tl.constexpr,
        ROPE: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PAGE_ALIGNED: tl.constexpr,
        TRANS: tl.constexpr,
        FP32_DOT: tl.constexpr,
    ):
        b = tl.program_id(0)
        hg = tl.program_id(1)
        sp = tl.program_id(2)
        offs_h = hg * BLOCK_H + tl.arange(0, BLOCK_H)
        h_mask = offs_h < H
        offs_l = tl.arange(0, LAT)
        offs_r = tl.arange(0, ROPE)
        ctx = tl.load(len_ptr + b).to(tl.int32)
        start = sp * split_len
        end = tl.minimum(start + split_len, ctx)

        qn = tl.load(
            qn_ptr + b * stride_qnb + offs_h[:, None] * stride_qnh + offs_l[None, :],
            mask=h_mask[:, None], other=0.0,
        )
        qp = tl.load(
            qp_ptr + b * stride_qpb + offs_h[:, None] * stride_qph + offs_r[None, :],
            mask=h_mask[:, None], other=0.0,
        )
        if FP32_DOT:
            qn = qn.to(tl.float32)
            qp = qp.to(tl.float32)
        m_i = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_H,), dtype=tl.float32)
        if TRANS:
            acc = tl.zeros((LAT, BLOCK_H), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_H, LAT), dtype=tl.float32)
        offs_n = tl.arange(0, BLOCK_N)
        for t0 in range(start, end, BLOCK_N):
            t = t0 + offs_n
            t_mask = t < end
            if PAGE_ALIGNED:
                # the whole chunk lies in one page: one scalar page-table read, affine tile
                page = tl.load(bt_ptr + b * stride_btb + t0 // BLOCK_SIZE)
                base = page.to(tl.int64) * stride_kvb + (t0 % BLOCK_SIZE) * stride_kvt
                row = base + offs_n * stride_kvt
            else:
                page = tl.load(bt_ptr + b * stride_btb + t // BLOCK_SIZE, mask=t_mask, other=0)
                row = page.to(tl.int64) * stride_kvb + (t % BLOCK_SIZE) * stride_kvt
            c = tl.load(kv_ptr + row[:, None] + offs_l[None, :], mask=t_mask[:, None], other=0.0)
            pe = tl.load(
                kv_ptr + row[:, None] + LAT + offs_r[None, :], mask=t_mask[:, None], other=0.0
            )
            if FP32_DOT:
                c = c.to(tl.float32)
                pe = pe.to(tl.float32)
            if TRANS:
                # tokens on the MMA's M side (>= 64 for Hopper wgmma), heads on N
                st = tl.dot(c, tl.trans(qn)) + tl.dot(pe, tl.trans(qp))  # [BLOCK_N, BLOCK_H]
                st = st * qk_scale
                st = tl.where(t_mask[:, None], st, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(st, axis=0))
                alpha = tl.exp2(m_i - m_new)
                pt = tl.exp2(st - m_new[None, :])
                l_i = l_i * alpha + tl.sum(pt, axis=0)
                acc = acc * alpha[None, :] + tl.dot(tl.trans(c), pt.to(c.dtype))  # [LAT, BLOCK_H]
            else:
                sc = tl.dot(qn, tl.trans(c)) + tl.dot(qp, tl.trans(pe))  # [BLOCK_H, BLOCK_N]
                sc = sc * qk_scale  # log2 domain
                sc = tl.where(t_mask[None, :], sc, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(sc, axis=1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(sc - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, axis=1)
                acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c)
            m_i = m_new
        has = end > start
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        lse = tl.where(has, m_i + tl.log2(l_safe), float("-inf"))
        mo = mid_o_ptr + b * stride_mob + sp * stride_mos
        if TRANS:
            o = acc / l_safe[None, :]
            tl.store(mo + offs_h[None, :] * stride_moh + offs_l[:, None], o, mask=h_mask[None, :])
        else:
            o = acc / l_safe[:, None]
            tl.store(mo + offs_h[:, None] * stride_moh + offs_l[None, :], o, mask=h_mask[:, None])
        tl.store(mid_lse_ptr + b * stride_mlb + offs_h * stride_mlh + sp, lse, mask=h_mask)

    @triton.jit(do_not_specialize=["S", "stride_mlb", "stride_mlh"])
    def _mla_decode_merge_kernel(
        mid_o_ptr, mid_lse_ptr, out_ptr,
        S,
        stride_mob, stride_moh, stride_mos, stride_mlb, stride_mlh,
        stride_ob, stride_oh,
        BLOCK_S: tl.constexpr,
        BLOCK_L: tl.constexpr,
    ):
        # out[b, h, l-chunk] = sum_s w_s * o_s / sum_s w_s,  w_s = 2^(lse_s - max lse).
        # All splits are loaded as one [BLOCK_S, BLOCK_L] tile (one round of loads, no
        # serial loop over splits: a loop made the merge latency-bound at 64+ splits).
        b = tl.program_id(0)
        h = tl.program_id(1)
        offs_l = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_s = tl.arange(0, BLOCK_S)
        s_mask = offs_s < S
        lse = tl.load(
            mid_lse_ptr + b * stride_mlb + h * stride_mlh + offs_s, mask=s_mask,
            other=float("-inf"),
        )
        m = tl.max(lse, axis=0)
        m = tl.where(m == float("-inf"), 0.0, m)
        w = tl.exp2(lse - m)  # 0 for empty splits
        denom = tl.sum(w, axis=0)
        denom = tl.where(denom > 0, denom, 1.0)
        live = s_mask & (w > 0)
        o = tl.load(
            mid_o_ptr + b * stride_mob + h * stride_moh + offs_s[:, None] * stride_mos
            + offs_l[None, :],
            mask=live[:, None], other=0.0,
        )
        acc = tl.sum(o * w[:, None], axis=0)
        tl.store(
            out_ptr + b * stride_ob + h * stride_oh + offs_l,
            (acc / denom).to(out_ptr.dtype.element_ty),
        )


def _default_splits(b: int, head_groups: int, capacity: int, device: torch.device, waves: int) -> int:
    """KV splits per (sequence, head group): ``waves`` times the SM count in programs
    (only one program fits an SM: ~144 KB of shared memory), rounded down so the last
    wave is full, but at least 8 splits.

    H200 sweep at 32K-128K contexts (bench/kernels.py --only mla_tune --sweep,
    results/bench/kernels_sweep_decode.json): 16-head tiles ran best at 2 waves (B=1: 256
    splits of 128-512 tokens, B=8: 32, B=32: 8), 64-head tiles at 1 (B=1: 64, B=8: 8;
    9 splits, 144 programs, took 40-75% longer than 8). The caller picks ``waves``.

    Below SHORT_CONTEXT tokens the earlier rule stays (one wave, splits of at least 256
    tokens), except that splits go down to SHORT_SPLIT_TOKENS as long as they fill at
    most one wave: the 256-token minimum left a few programs on 132 SMs (B=1, 128 heads,
    256-token prompt: 4 programs, 31 us per layer in the W3 profile).
    """
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    rows = max(1, b * head_groups)
    if capacity >= SHORT_CONTEXT:
        return max(1, min(max(8, waves * sms // rows), capacity // MIN_SPLIT_TOKENS, MAX_SPLITS))
    splits = max(1, min(max(8, math.ceil(sms / rows)), capacity // SHORT_MIN_SPLIT_TOKENS, SHORT_MAX_SPLITS))
    return max(splits, min(sms // rows, capacity // SHORT_SPLIT_TOKENS, SHORT_MAX_SPLITS))


def split_plan(b: int, h: int, capacity: int, cfg: MlaDecodeConfig, device: torch.device) -> tuple[int, int]:
    """(number of KV splits, tokens per split) that ``mla_decode`` launches with.

    Heuristic splits (``num_splits=None``) take 2 waves of programs for tiles of <= 16
    heads (bandwidth-bound) and 1 wave for larger head groups (compute-bound); see
    _default_splits. The split length is rounded up to whole MIN_SPLIT_TOKENS pieces
    (never more splits than asked for); explicit ``num_splits`` and short contexts are
    honoured more exactly (``block_n`` multiples)."""
    waves = 2 if cfg.block_h <= 16 else 1
    splits = cfg.num_splits or _default_splits(b, math.ceil(h / cfg.block_h), capacity, device, waves)
    align = cfg.block_n if cfg.num_splits or capacity < SHORT_CONTEXT else max(cfg.block_n, MIN_SPLIT_TOKENS)
    split_len = math.ceil(math.ceil(max(capacity, 1) / splits) / align) * align
    return max(1, math.ceil(max(capacity, 1) / split_len)), split_len


def default_mla_config(b: int, h: int) -> MlaDecodeConfig:
    """Launch config from the H200 sweep (bench/kernels.py --only mla_tune --sweep, contexts
    32K-128K, B = 1/8/32; rows in results/bench/kernels_sweep_decode.json).

    <= 16 heads (tensor-parallel shards): one 16-head group, heads on the MMA's M side,
    64-token chunks, 2 stages: 95-102% of the 4.24 TB/s copy rate at B=32 (reads alone
    may pass a copy's read+write rate) against 75-79% for the tokens-major (transposed)
    tiles used before. More heads: 64-head groups with 64-token chunks (the cache is read
    once per 64 heads), 255-281 TFLOP/s at B >= 8 against 105-191 with 32-token chunks.
    Contexts below 32K were not part of that sweep.
    """
    if h <= 16:
        return MlaDecodeConfig(block_h=16, block_n=64, num_warps=4, num_stages=2)
    return MlaDecodeConfig(block_h=64, block_n=64, num_warps=8, num_stages=2)


def mla_decode(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    sm_scale: float,
    max_context_len: int | None = None,
    config: MlaDecodeConfig | None = None,
) -> torch.Tensor:
    """Absorbed-MLA decode attention (one query token per sequence) over a paged cache.

    Args:
        q_nope: bf16 ``[B, H, kv_lora_rank]`` (q_nope already multiplied by W_UK).
        q_pe: bf16 ``[B, H, rope_dim]`` (RoPE applied).
        kv_cache: bf16 ``[num_blocks, block_size, kv_lora_rank + rope_dim]``.
        block_tables: int ``[B, max_blocks]`` page ids.
        context_lens: int ``[B]`` tokens to attend (including the current one, which the
            caller must already have written to the cache).
        sm_scale: softmax scale (DeepSeek: ``qk_head_dim**-0.5`` times the YaRN mscale^2).
        max_context_len: optional host-side upper bound of ``context_lens``; sizes the
            splits (default: ``max_blocks * block_size``). Must not be smaller than any
            context length, or tokens are silently dropped.
        config: optional explicit launch config.

    Returns:
        ``[B, H, kv_lora_rank]`` in ``q_nope.dtype`` (latent space; apply W_UV next).
    """
    if q_nope.dim() != 3 or q_pe.dim() != 3 or q_nope.shape[:2] != q_pe.shape[:2]:
        raise ValueError(f"q_nope [B,H,L] and q_pe [B,H,R] mismatch: {tuple(q_nope.shape)} {tuple(q_pe.shape)}")
    b, h, lat = q_nope.shape
    rope = q_pe.shape[2]
    if kv_cache.dim() != 3 or kv_cache.shape[2] != lat + rope:
        raise ValueError(f"kv_cache must be [num_blocks, block_size, {lat + rope}], got {tuple(kv_cache.shape)}")
    if kv_cache.dtype != q_nope.dtype or q_pe.dtype != q_nope.dtype:
        raise TypeError("q_nope, q_pe and kv_cache must share a dtype (bf16)")
    if block_tables.dim() != 2 or block_tables.shape[0] != b or context_lens.shape != (b,):
        raise ValueError("block_tables must be [B, max_blocks] and context_lens [B]")
    if block_tables.dtype not in (torch.int32, torch.int64) or context_lens.dtype not in (torch.int32, torch.int64):
        raise TypeError("block_tables and context_lens must be int32/int64")
    if not triton_available_for(q_nope):
        return mla_decode_torch(q_nope, q_pe, kv_cache, block_tables, context_lens, sm_scale)
    for name, n in (("kv_lora_rank", lat), ("rope_dim", rope)):
        if n & (n - 1):
            raise ValueError(f"{name}={n} must be a power of two for the Triton kernel")
    if q_nope.stride(2) != 1 or q_pe.stride(2) != 1 or kv_cache.stride(2) != 1:
        raise ValueError("last dims of q_nope, q_pe, kv_cache must be contiguous")
    cfg = config or default_mla_config(b, h)
    block_size = kv_cache.shape[1]
    capacity = block_tables.shape[1] * block_size
    if max_context_len is not None:
        capacity = min(capacity, max_context_len)
    head_groups = triton.cdiv(h, cfg.block_h)
    splits, split_len = split_plan(b, h, capacity, cfg, q_nope.device)
    dev = q_nope.device
    mid_o = torch.empty(b, h, splits, lat, dtype=torch.float32, device=dev)
    mid_lse = torch.empty(b, h, splits, dtype=torch.float32, device=dev)
    out = torch.empty(b, h, lat, dtype=q_nope.dtype, device=dev)
    if b == 0 or h == 0:
        return out
    _mla_decode_split_kernel[(b, head_groups, splits)](
        q_nope, q_pe, kv_cache, block_tables, context_lens, mid_o, mid_lse,
        h, split_len, sm_scale * _LOG2E,
        q_nope.stride(0), q_nope.stride(1), q_pe.stride(0), q_pe.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), block_tables.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        BLOCK_SIZE=block_size, LAT=lat, ROPE=rope,
        BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n,
        # split_len is a multiple of block_n, so with block_n | block_size no chunk
        # straddles a page
        PAGE_ALIGNED=(block_size % cfg.block_n == 0 if cfg.page_aligned is None
                      else cfg.page_aligned and block_size % cfg.block_n == 0),
        TRANS=cfg.transposed,
        FP32_DOT=interpret_mode(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    block_s = max(2, triton.next_power_of_2(splits))
    block_l = min(lat, max(16, 8192 // block_s))  # <= 8K fp32 per program
    _mla_decode_merge_kernel[(b, h, triton.cdiv(lat, block_l))](
        mid_o, mid_lse, out, splits,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        BLOCK_S=block_s, BLOCK_L=block_l,
        num_warps=4,
    )
    return out
