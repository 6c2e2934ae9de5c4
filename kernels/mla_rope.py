"""MLA's per-token glue in one launch: rotary on the queries' rope part, and the latent cache row.

Between the q_b / kv_a projections and attention, each MLA layer (DeepSeek-V2 §2.1.3) rotates
q_pe for every head, normalizes c_kv with ``kv_a_layernorm``, rotates the shared k_pe and writes
``[c_kv, k_pe]`` into the paged latent cache. In PyTorch that is ~25 small kernels (table
lookups, float casts, splits, the rotation's mul/sub/stack, a concatenation, the indexed cache
write); at batch 1 each costs more to launch than its arithmetic, and decode is launch-bound
(bench/README.md). Here one program per token and block of up to 32 heads rotates those heads'
q_pe into a contiguous ``[T, H, rope]`` tensor, and one extra program per token writes its cache
row. (One program per head cost 1.28 ms per 16K-token prefill chunk at 128 heads: two million
one-warp programs of 32 pairs each.)

Semantics (those of ``engine.model.mla.MLAttention`` on CUDA): rotation in float32 with the float32
cos/sin tables (YaRN's factor folded in), each output rounded once; the norm's statistics and
weight in float32, one rounding (as ``kernels.norm``). ``interleave`` rotates pairs (2i, 2i+1)
(DeepSeek checkpoints), otherwise halves (i, i + rope/2); outputs keep the input's layout.
"""

from __future__ import annotations

import torch

from .fp8_quant import HAS_TRITON, triton_available_for

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["mla_rope_and_cache", "mla_rope_and_cache_torch"]


def _rotate_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """x [T, ..., d] float32 rotated by cos/sin [T, d/2] (broadcast over the middle dims)."""
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[1],)
    c, s = cos.view(shape), sin.view(shape)
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def mla_rope_and_cache_torch(q: torch.Tensor, kv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                             sin: torch.Tensor, norm_weight: torch.Tensor, eps: float, cache: torch.Tensor,
                             slot_mapping: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Reference of :func:`mla_rope_and_cache` (same arguments and effects)."""
    rope = cos.shape[1] * 2
    c, s = cos[positions], sin[positions]
    q_pe = _rotate_torch(q[..., -rope:].float(), c, s, interleave).to(q.dtype)
    c_kv = kv[:, :-rope].float()
    c_kv = c_kv * torch.rsqrt(c_kv.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.float()
    k_pe = _rotate_torch(kv[:, -rope:].float(), c, s, interleave).to(kv.dtype)
    row = torch.cat([c_kv.to(kv.dtype), k_pe], dim=-1)
    cache.view(-1, cache.shape[-1])[slot_mapping] = row.to(cache.dtype)
    return q_pe


if HAS_TRITON:

    @triton.jit
    def _mla_rope_cache_kernel(
        q_ptr, kv_ptr, pos_ptr, cos_ptr, sin_ptr, w_ptr, cache_ptr, slot_ptr, qpe_ptr,
        H, stride_qt, stride_qh, stride_kvt, stride_cos, stride_slot, eps,
        NOPE: tl.constexpr, HALF: tl.constexpr, KV_RANK: tl.constexpr, BLOCK_C: tl.constexpr,
        BLOCK_H: tl.constexpr, INTERLEAVE: tl.constexpr,
    ):
        t = tl.program_id(0).to(tl.int64)  # t x stride_qt passes 2^31 in a 128K-token chunk
        hb = tl.program_id(1)
        i = tl.arange(0, HALF)
        p = tl.load(pos_ptr + t)
        c = tl.load(cos_ptr + p * stride_cos + i)
        s = tl.load(sin_ptr + p * stride_cos + i)
        if hb < tl.num_programs(1) - 1:  # BLOCK_H heads' q_pe -> contiguous [T, H, rope]
            h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
            ok = h[:, None] < H
            d = tl.arange(0, 2 * HALF)
            # each head's rope part is one contiguous run: load it whole (vector loads), then split
            qx = tl.load(q_ptr + t * stride_qt + h[:, None] * stride_qh + NOPE + d[None, :], mask=ok, other=0.0)
            qx = qx.to(tl.float32)
            if INTERLEAVE:
                qa, qb = tl.split(tl.reshape(qx, (BLOCK_H, HALF, 2)))
            else:
                qa, qb = tl.split(tl.permute(tl.reshape(qx, (BLOCK_H, 2, HALF)), (0, 2, 1)))
            qy = tl.join(qa * c[None, :] - qb * s[None, :], qb * c[None, :] + qa * s[None, :])  # [BLOCK_H, HALF, 2]
            if not INTERLEAVE:
                qy = tl.permute(qy, (0, 2, 1))
            q_dst = qpe_ptr + (t * H + h[:, None]) * (2 * HALF) + d[None, :]
            tl.store(q_dst, tl.reshape(qy, (BLOCK_H, 2 * HALF)).to(qpe_ptr.dtype.element_ty), mask=ok)
        else:  # the token's latent cache row [norm(c_kv), rot(k_pe)]
            row = cache_ptr + tl.load(slot_ptr + t * stride_slot) * (KV_RANK + 2 * HALF)
            src = kv_ptr + t * stride_kvt
            cols = tl.arange(0, BLOCK_C)
            m = cols < KV_RANK
            x = tl.load(src + cols, mask=m, other=0.0).to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / KV_RANK + eps)
            w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
            # round to the activations' dtype first (the unfused path's c_kv), then to the cache's
            y = (x * rstd * w).to(kv_ptr.dtype.element_ty)
            tl.store(row + cols, y.to(cache_ptr.dtype.element_ty), mask=m)
            pe = src + KV_RANK
            if INTERLEAVE:
                a = tl.load(pe + 2 * i).to(tl.float32)
                b = tl.load(pe + 2 * i + 1).to(tl.float32)
                ra = (a * c - b * s).to(kv_ptr.dtype.element_ty)
                rb = (b * c + a * s).to(kv_ptr.dtype.element_ty)
                tl.store(row + KV_RANK + 2 * i, ra.to(cache_ptr.dtype.element_ty))
                tl.store(row + KV_RANK + 2 * i + 1, rb.to(cache_ptr.dtype.element_ty))
            else:
                a = tl.load(pe + i).to(tl.float32)
                b = tl.load(pe + HALF + i).to(tl.float32)
                ra = (a * c - b * s).to(kv_ptr.dtype.element_ty)
                rb = (b * c + a * s).to(kv_ptr.dtype.element_ty)
                tl.store(row + KV_RANK + i, ra.to(cache_ptr.dtype.element_ty))
                tl.store(row + KV_RANK + HALF + i, rb.to(cache_ptr.dtype.element_ty))


def mla_rope_and_cache(q: torch.Tensor, kv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                       sin: torch.Tensor, norm_weight: torch.Tensor, eps: float, cache: torch.Tensor,
                       slot_mapping: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate the queries' rope part and write each token's latent cache row; no host sync.

    Args:
        q: ``[T, H, nope + rope]`` (last dim contiguous), the q_b output per head.
        kv: ``[T, kv_rank + rope]`` (last dim contiguous), the kv_a output ``[c_kv, k_pe]``.
        positions: ``[T]`` integer positions; ``cos``/``sin``: ``[max_pos, rope/2]`` float32
            tables covering them (the caller guarantees the range: no bounds check on device).
        norm_weight: ``[kv_rank]``, ``kv_a_layernorm``'s weight; ``eps`` its epsilon.
        cache: ``[num_blocks, block_size, kv_rank + rope]``; row ``slot_mapping[t]`` (flat
            index) receives token t's ``[norm(c_kv), rot(k_pe)]``.
        interleave: rotate pairs (2i, 2i+1) rather than halves.

    Returns:
        q_pe rotated, contiguous ``[T, H, rope]`` in ``q.dtype``.
    """
    rope = cos.shape[1] * 2
    T, H, width = q.shape
    kv_rank = kv.shape[1] - rope
    if cache.shape[-1] != kv_rank + rope or norm_weight.shape != (kv_rank,):
        raise ValueError(f"cache rows must be {kv_rank + rope} wide and the norm weight [{kv_rank}]")
    if cos.shape != sin.shape or cos.stride(-1) != 1 or sin.stride() != cos.stride():
        raise ValueError("cos and sin must be equally shaped tables with contiguous rows")
    if not triton_available_for(q) or q.stride(-1) != 1 or kv.stride(-1) != 1 or not cache.is_contiguous():
        return mla_rope_and_cache_torch(q, kv, positions, cos, sin, norm_weight, eps, cache, slot_mapping, interleave)
    q_pe = torch.empty(T, H, rope, dtype=q.dtype, device=q.device)
    if T:
        block_h = min(triton.next_power_of_2(H), 32)
        _mla_rope_cache_kernel[(T, triton.cdiv(H, block_h) + 1)](
            q, kv, positions, cos, sin, norm_weight, cache, slot_mapping, q_pe,
            H, q.stride(0), q.stride(1), kv.stride(0), cos.stride(0), slot_mapping.stride(0), eps,
            NOPE=width - rope, HALF=rope // 2, KV_RANK=kv_rank, BLOCK_C=triton.next_power_of_2(kv_rank),
            BLOCK_H=block_h, INTERLEAVE=interleave, num_warps=2,
        )
    return q_pe
