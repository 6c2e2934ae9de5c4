"""FP8 MLA prefill attention: one Triton flash-attention kernel with e4m3 tensor-core dots.

Why: at long contexts prefill time is causal attention (a 128K prompt spends ~3.6 s of 4.7 s
in bf16 cuDNN attention at ~77% of the bf16 peak); e4m3 dots double the tensor-core rate.
It changes numerics (Q, K, V and the softmax probabilities are rounded to e4m3), so it is an
opt-in backend (``EngineConfig.prefill_attention="fp8"``), like vLLM's FP8 attention; the
default prefill attention stays bf16.

Quantization (chosen so the kernel's inner loop does no more elementwise work than a bf16
flash kernel):

* keys: one scale per head for ``k_nope`` (``sk[h] = amax / 448`` over the whole context) and
  one for the shared rotary key ``k_pe`` (``skp``);
* queries: one scale per (token, head) over ``[q_nope, q_pe * skp / sk[h]]``, quantized inside
  the attention program. Folding ``skp / sk[h]`` into ``q_pe`` makes both partial dots share the
  key scale, so they accumulate into one score tile, and the score is
  ``dot * sq[t, h] * sk[h]``: one per-row factor, merged with the softmax scale;
* values: one scale per (head, channel), applied to the output once at the end;
* probabilities: computed as ``2^8 * exp2(s - max)`` (the shift folded into the exponent) so
  that down to ~2^-17 of the row maximum they stay representable in e4m3 instead of flushing
  to zero below 2^-9; the same factor is in the row sum, so it cancels.

Each P·V tile is a fresh dot added to the fp32 accumulator (not accumulated inside the
tensor-core instruction) so the sum over a 128K context keeps fp32 precision.

Shapes (one sequence): q_nope [t, H, nope], q_pe [t, H, rope], k_nope [S, H, nope], k_pe
[S, rope], v [S, H, v]; the chunk's queries are the last t of the S positions (bottom-right
causal). nope, rope and v must be powers of two, at least 16 (V3: 128, 64, 128). Returns bf16
[t, H, v].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .fp8_quant import FP8_DTYPE, FP8_MAX, HAS_TRITON, interpret_mode

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["Fp8AttentionConfig", "check_head_dims", "mla_prefill_attention_fp8"]

#: Probabilities are scaled by 2**P_SHIFT before the e4m3 cast (max 256 < 448).
P_SHIFT: int = 8
_EPS: float = 1e-12
_SCAN_ROWS: int = 64  # context rows per program of the scale and quantization passes


@dataclass(frozen=True)
class Fp8AttentionConfig:
    """Launch config of the attention kernel. H200 default from ``bench/kernels.py --only
    prefill_attn --sweep``: 128x128 tiles, 8 warps, 4 stages. At a 16K chunk over 128K keys,
    3 stages was 3% slower, 2 stages and 128x64 / 64x64 / 64x128 tiles 18-34%; neither Triton's
    automatic warp specialization nor issuing the next tile's q·k dots before this tile's
    softmax gained anything (results/bench/kernels_prefill_attn*.json, bench/README.md)."""

    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 4


if HAS_TRITON:

    @triton.jit
    def _kv_scan_kernel(k_ptr, v_ptr, ks_ptr, vs_ptr, k8_ptr, vt8_ptr, S, stride_ks, stride_kh, stride_vs, stride_vh,
                        stride_k8s, stride_k8h, stride_vt8h, stride_vt8d,
                        NOPE: tl.constexpr, VD: tl.constexpr, ROWS: tl.constexpr, QUANT: tl.constexpr):
        # One pass over a block of context rows of one head's k_nope and v.
        # QUANT=False: max |k_nope| and max |v| per channel into the partial buffers ks_ptr
        #   [blocks, H] and vs_ptr [blocks, H, VD] (torch reduces them: deterministic).
        # QUANT=True: ks_ptr [H] and vs_ptr [H, VD] hold the scales; k_nope -> e4m3 [S, H, NOPE],
        #   v -> e4m3 transposed [H, VD, S] (the P·V dot wants its reduction dim contiguous).
        blk = tl.program_id(0)
        h = tl.program_id(1).to(tl.int64)  # h x (VD x S) passes 2^31 beyond 128K rows at 128 heads
        rows = blk * ROWS + tl.arange(0, ROWS)
        ok = rows < S
        r64 = rows[:, None].to(tl.int64)
        dn = tl.arange(0, NOPE)
        dv = tl.arange(0, VD)
        k = tl.load(k_ptr + r64 * stride_ks + h * stride_kh + dn[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        v = tl.load(v_ptr + r64 * stride_vs + h * stride_vh + dv[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        if QUANT:
            kq = (k / tl.load(ks_ptr + h)).to(k8_ptr.dtype.element_ty)
            tl.store(k8_ptr + r64 * stride_k8s + h * stride_k8h + dn[None, :], kq, mask=ok[:, None])
            vq = (v / tl.load(vs_ptr + h * VD + dv)[None, :]).to(vt8_ptr.dtype.element_ty)
            tl.store(vt8_ptr + h * stride_vt8h + dv[:, None] * stride_vt8d + rows[None, :], tl.trans(vq),
                     mask=ok[None, :])
        else:
            part = blk * tl.num_programs(1) + h
            tl.store(ks_ptr + part, tl.max(tl.max(tl.abs(k), axis=1), axis=0))
            tl.store(vs_ptr + part * VD + dv, tl.max(tl.abs(v), axis=0))

    @triton.jit
    def _scores(qn8, qp8, k8_ptr, kp8_ptr, n0, S, stride_k8s, stride_kps,
                NOPE: tl.constexpr, ROPE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                FP32_DOT: tl.constexpr):
        """Raw q·k dots [BLOCK_M, BLOCK_N] of one key tile (``k8_ptr`` points at this head)."""
        n64 = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        dn = tl.arange(0, NOPE)
        dp = tl.arange(0, ROPE)
        if MASKED:
            in_ctx = n64 < S
            kn = tl.load(k8_ptr + n64[:, None] * stride_k8s + dn[None, :], mask=in_ctx[:, None], other=0.0)
            kp = tl.load(kp8_ptr + n64[:, None] * stride_kps + dp[None, :], mask=in_ctx[:, None], other=0.0)
        else:
            kn = tl.load(k8_ptr + n64[:, None] * stride_k8s + dn[None, :])
            kp = tl.load(kp8_ptr + n64[:, None] * stride_kps + dp[None, :])
        if FP32_DOT:  # the interpreter's low-precision dots are wrong: same math in fp32
            s = tl.dot(qn8.to(tl.float32), tl.trans(kn.to(tl.float32)))
            return tl.dot(qp8.to(tl.float32), tl.trans(kp.to(tl.float32)), s)
        s = tl.dot(qn8, tl.trans(kn))
        return tl.dot(qp8, tl.trans(kp), s)

    @triton.jit
    def _update(acc, l_i, m_i, s, row_scale, vt8_ptr, n0, offs_m, q_pos0, S, stride_vt8d,
                VD: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, FP32_DOT: tl.constexpr,
                SHIFT: tl.constexpr):
        """Online-softmax step for one tile's raw dots ``s`` (``vt8_ptr`` points at this head)."""
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n64 = offs_n.to(tl.int64)
        dv = tl.arange(0, VD)
        if MASKED:
            visible = (offs_n[None, :] <= q_pos0 + offs_m[:, None]) & (offs_n[None, :] < S)
            s = tl.where(visible, s, float("-inf"))
            vt = tl.load(vt8_ptr + dv[:, None] * stride_vt8d + n64[None, :], mask=offs_n[None, :] < S, other=0.0)
        else:
            vt = tl.load(vt8_ptr + dv[:, None] * stride_vt8d + n64[None, :])
        # row_scale > 0, so the row maximum can be taken on the raw dots; the per-element work
        # is then one max, one FMA (scale, maximum and the 2^SHIFT in one), exp2 and the sum
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * row_scale)  # log2 units
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s * row_scale[:, None] - (m_new - SHIFT)[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        p8 = p.to(vt8_ptr.dtype.element_ty)
        if FP32_DOT:
            pv = tl.dot(p8.to(tl.float32), tl.trans(vt.to(tl.float32)))
        else:
            pv = tl.dot(p8, tl.trans(vt))
        return acc * alpha[:, None] + pv, l_i, m_new

    @triton.jit
    def _mla_fp8_attn_kernel(
        qn_ptr, qp_ptr, k8_ptr, kp8_ptr, vt8_ptr, sk_ptr, skp_ptr, sv_ptr, o_ptr,
        T, S, sm_scale_log2,
        stride_qnt, stride_qnh, stride_qpt, stride_qph,
        stride_k8s, stride_k8h, stride_kps, stride_vt8h, stride_vt8d, stride_ot, stride_oh,
        NOPE: tl.constexpr, ROPE: tl.constexpr, VD: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr, SHIFT: tl.constexpr,
        FP8_MAX_C: tl.constexpr, EPS: tl.constexpr,
    ):
        # the last query blocks see the most keys: launch them first so the tail is short
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        h = tl.program_id(1).to(tl.int64)  # see _kv_scan_kernel
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < T
        m64 = offs_m[:, None].to(tl.int64)
        dn = tl.arange(0, NOPE)
        dp = tl.arange(0, ROPE)
        dv = tl.arange(0, VD)
        qn = tl.load(qn_ptr + m64 * stride_qnt + h * stride_qnh + dn[None, :], mask=m_ok[:, None], other=0.0)
        qp = tl.load(qp_ptr + m64 * stride_qpt + h * stride_qph + dp[None, :], mask=m_ok[:, None], other=0.0)
        sk = tl.load(sk_ptr + h)
        qn = qn.to(tl.float32)
        qp = qp.to(tl.float32) * (tl.load(skp_ptr) / sk)
        amax = tl.maximum(tl.max(tl.abs(qn), axis=1), tl.max(tl.abs(qp), axis=1))
        sq = tl.maximum(amax, EPS) / FP8_MAX_C
        qn8 = (qn / sq[:, None]).to(k8_ptr.dtype.element_ty)
        qp8 = (qp / sq[:, None]).to(k8_ptr.dtype.element_ty)
        row_scale = sq * sk * sm_scale_log2
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, VD), tl.float32)
        q_pos0 = S - T  # absolute position of query row 0
        k8_h = k8_ptr + h * stride_k8h
        vt8_h = vt8_ptr + h * stride_vt8h
        # keys [0, lo) are visible to every row of the block; [lo, hi) need the causal mask
        lo = (q_pos0 + pid_m * BLOCK_M + 1) // BLOCK_N * BLOCK_N
        hi = tl.minimum(S, q_pos0 + pid_m * BLOCK_M + BLOCK_M)
        for n0 in range(0, lo, BLOCK_N):
            s = _scores(qn8, qp8, k8_h, kp8_ptr, n0, S, stride_k8s, stride_kps, NOPE, ROPE, BLOCK_N, False, FP32_DOT)
            acc, l_i, m_i = _update(acc, l_i, m_i, s, row_scale, vt8_h, n0, offs_m, q_pos0, S, stride_vt8d, VD,
                                    BLOCK_N, False, FP32_DOT, SHIFT)
        for n0 in range(lo, hi, BLOCK_N):
            s = _scores(qn8, qp8, k8_h, kp8_ptr, n0, S, stride_k8s, stride_kps, NOPE, ROPE, BLOCK_N, True, FP32_DOT)
            acc, l_i, m_i = _update(acc, l_i, m_i, s, row_scale, vt8_h, n0, offs_m, q_pos0, S, stride_vt8d, VD,
                                    BLOCK_N, True, FP32_DOT, SHIFT)
        out = acc / l_i[:, None] * tl.load(sv_ptr + h * VD + dv)[None, :]
        tl.store(o_ptr + m64 * stride_ot + h * stride_oh + dv[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=m_ok[:, None])


def check_head_dims(nope: int, rope: int, v: int) -> None:
    """ValueError naming the config field unless the kernel can take these head dims (its
    tiles are powers of two, and a tensor-core dot needs a reduction of at least 16)."""
    for name, n in (("qk_nope_head_dim", nope), ("qk_rope_head_dim", rope), ("v_head_dim", v)):
        if n < 16 or n & (n - 1):
            raise ValueError(f"FP8 prefill attention needs power-of-two head dims >= 16, got {name}={n}")


def _inner_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def mla_prefill_attention_fp8(
    q_nope: torch.Tensor, q_pe: torch.Tensor, k_nope: torch.Tensor, k_pe: torch.Tensor,
    v: torch.Tensor, sm_scale: float, config: Fp8AttentionConfig | None = None,
) -> torch.Tensor:
    """Bottom-right causal attention of the last t positions over all S, e4m3 dots (see module)."""
    if not HAS_TRITON:
        raise RuntimeError("FP8 prefill attention needs Triton")
    cfg = config or Fp8AttentionConfig()
    t, h, nope = q_nope.shape
    s, rope, vd = k_nope.shape[0], q_pe.shape[-1], v.shape[-1]
    check_head_dims(nope, rope, vd)
    if s < t:
        raise ValueError(f"context ({s} rows) shorter than the query chunk ({t})")
    q_nope, q_pe, k_nope, k_pe, v = (_inner_contiguous(x) for x in (q_nope, q_pe, k_nope, k_pe, v))
    dev = q_nope.device
    blocks = triton.cdiv(s, _SCAN_ROWS)
    kmax = torch.empty(blocks, h, dtype=torch.float32, device=dev)
    vmax = torch.empty(blocks, h, vd, dtype=torch.float32, device=dev)
    k8 = torch.empty(s, h, nope, dtype=FP8_DTYPE, device=dev)
    s_pad = -(-s // 16) * 16  # 16-byte aligned rows for the transposed values
    vt8 = torch.empty(h, vd, s_pad, dtype=FP8_DTYPE, device=dev)

    def scan(ks: torch.Tensor, vs: torch.Tensor, quant: bool) -> None:
        _kv_scan_kernel[(blocks, h)](k_nope, v, ks, vs, k8, vt8, s, k_nope.stride(0), k_nope.stride(1), v.stride(0),
                                     v.stride(1), k8.stride(0), k8.stride(1), vt8.stride(0), vt8.stride(1),
                                     NOPE=nope, VD=vd, ROWS=_SCAN_ROWS, QUANT=quant, num_warps=4)

    scan(kmax, vmax, False)
    sk = kmax.amax(0).clamp_min(_EPS) / FP8_MAX  # [H]
    sv = vmax.amax(0).clamp_min(_EPS) / FP8_MAX  # [H, v]
    scan(sk, sv, True)
    skp = k_pe.float().abs().amax().clamp_min(_EPS).reshape(1) / FP8_MAX
    kp8 = (k_pe.float() / skp).to(FP8_DTYPE)  # [S, rope]: small, shared by all heads
    out = torch.empty(t, h, vd, dtype=torch.bfloat16, device=dev)
    _mla_fp8_attn_kernel[(triton.cdiv(t, cfg.block_m), h)](
        q_nope, q_pe, k8, kp8, vt8, sk, skp, sv, out, t, s, sm_scale * math.log2(math.e),
        q_nope.stride(0), q_nope.stride(1), q_pe.stride(0), q_pe.stride(1),
        k8.stride(0), k8.stride(1), kp8.stride(0), vt8.stride(0), vt8.stride(1), out.stride(0), out.stride(1),
        NOPE=nope, ROPE=rope, VD=vd, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, FP32_DOT=interpret_mode(),
        SHIFT=P_SHIFT, FP8_MAX_C=FP8_MAX, EPS=_EPS, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
