"""Block-scaled FP8 linear layers (DeepSeek-V3 ``weight`` e4m3 + ``weight_scale_inv``).

``fp8_linear(x, weight, weight_scale_inv)`` computes ``x @ dequant(weight).T`` in bf16 and
dispatches between three GPU paths and one CPU path:

* **skinny (decode), M <= SKINNY_M_MAX** (64; but M >= 16 with a weight >= 32 MB and a
  cuBLAS-safe shape goes to ``torch._scaled_mm``, measured faster there under CUDA
  graphs): Triton *W8A16* split-K kernel. Decode GEMMs are
  bound by reading the weight once (N*K bytes); the activation is tiny, so it is NOT
  quantized: each program loads bf16 ``x``, upconverts its e4m3 weight tile to bf16 with
  integer bit moves (``_e4m3_to_bf16``; the conversion instructions it replaced were what
  bounded this kernel), runs a bf16 tensor-core dot, and multiplies by the 128x128 block
  scale. Split-K keeps enough programs in flight to saturate HBM when N is small (e.g. 1536) and K large; partial
  sums go to an fp32 ``[split, M, N]`` buffer, summed in split order either by each
  output tile's last-arriving program (one launch; an atomic counter says who is last)
  or by a second tiny kernel. Launch configs come from an H200 sweep per shape
  (``default_skinny_config``). Numerically this is *more* accurate than DeepSeek's
  reference (which quantizes activations to e4m3), so results at M < 16 and at larger M
  differ by about one activation-quantization error (2.6e-2 relative on random data,
  H200 check). Every path is deterministic (fixed summation order; no float atomics).
* **large M, shape safe for cuBLAS**: quantize ``x`` 1x128 (column-major scales) and call
  ``torch._scaled_mm`` with block scales. Guards: ``K % 512 == 0`` (cuBLAS silently
  mis-computes when ``K/128`` is not a multiple of 4), ``N % 128 == 0`` (partial scale
  blocks), and M padded to a multiple of 4 at quantization time (M % 4 != 0 is rejected).
* **large M otherwise**: Triton *W8A8* block-scaled GEMM (fp8 tensor cores, per-128-K
  rescale of the fp32 accumulator), same numerics as DeepSeek's reference kernel.
* **CPU / no Triton**: dequantize the weight in torch and matmul in fp32.

Dtypes and layouts (all kernels):
    x:                 bf16 ``[..., K]`` (last dim contiguous)
    weight:            e4m3fn ``[N, K]`` row-major contiguous
    weight_scale_inv:  fp32 ``[ceil(N/128), ceil(K/128)]`` row-major; ``w = q * s``
    activation scales: fp32 ``[M, K/128]`` any strides (W8A8 kernel)
    output:            bf16 ``[..., N]``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .fp8_quant import (
    FP8_DTYPE,
    HAS_TRITON,
    dequant_block_fp8_weight,
    interpret_mode,
    per_token_group_quant_fp8,
    triton_available_for,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .tile_order import grouped_tile

__all__ = [
    "SCALED_MM_MIN_M",
    "SKINNY_M_MAX",
    "GemmConfig",
    "SkinnyConfig",
    "fp8_gemm_scaled_mm",
    "fp8_gemm_w8a8",
    "fp8_gemm_w8a16_skinny",
    "fp8_linear",
    "fp8_linear_torch",
    "scaled_mm_is_safe",
]

BLOCK: int = 128  # DeepSeek weight block (both dims) and activation group size.
# Up to this many rows use the W8A16 split-K kernel ... except for big weights at
# M >= SCALED_MM_MIN_M where cuBLAS (under CUDA graphs) streams them faster (H200 sweep:
# wo/dense/down projections at M=16..64 ran at 53-68% of HBM vs 46-51% for the Triton
# kernel; small weights like wq_a stay faster in Triton).
SKINNY_M_MAX: int = 64
SCALED_MM_MIN_M: int = 16
SCALED_MM_MIN_WEIGHT_BYTES: int = 32 * 1024 * 1024

Backend = Literal["auto", "skinny", "w8a8", "scaled_mm", "torch"]


@dataclass(frozen=True)
class SkinnyConfig:
    """Launch config for the skinny W8A16 kernel. ``split_k`` is the number of K slices
    (each a whole number of 128-K blocks); ``block_n`` must divide 128.

    ``fused_reduce`` sums the split-K partials inside the same launch (each output tile's
    last-arriving split adds them up in split order) instead of in a second reduction
    kernel: one launch less, ~1 us saved on the small decode GEMMs (H200 sweep)."""

    block_n: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    swap_ab: bool = False  # measured slightly slower on H200 (bench sweep); kept as option
    fused_reduce: bool = True


@dataclass(frozen=True)
class GemmConfig:
    """Launch config for the W8A8 block-scaled kernel (BLOCK_K is fixed to 128)."""

    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 3
    group_m: int = 8


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _check_weight(weight: torch.Tensor, weight_scale_inv: torch.Tensor) -> tuple[int, int]:
    if weight.dim() != 2:
        raise ValueError(f"weight must be [N, K], got shape {tuple(weight.shape)}")
    if weight.dtype != FP8_DTYPE:
        raise TypeError(f"weight must be {FP8_DTYPE}, got {weight.dtype}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous (row-major [N, K])")
    n, k = weight.shape
    exp = (math.ceil(n / BLOCK), math.ceil(k / BLOCK))
    if tuple(weight_scale_inv.shape) != exp:
        raise ValueError(
            f"weight_scale_inv must be [ceil(N/128), ceil(K/128)] = {exp}, "
            f"got {tuple(weight_scale_inv.shape)}"
        )
    if weight_scale_inv.dtype != torch.float32:
        raise TypeError(f"weight_scale_inv must be float32, got {weight_scale_inv.dtype}")
    if weight_scale_inv.device != weight.device:
        raise ValueError("weight and weight_scale_inv are on different devices")
    return n, k


def fp8_linear_torch(
    x: torch.Tensor, weight: torch.Tensor, weight_scale_inv: torch.Tensor
) -> torch.Tensor:
    """Pure-torch fallback: dequantize the weight to fp32 and matmul (any device)."""
    w = dequant_block_fp8_weight(weight, weight_scale_inv)
    return (x.float() @ w.t()).to(x.dtype)


# ----------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _finish_split_k(
        acc, offs, mask, out_ptr, part_ptr, cnt_ptr, tile, pid_s, NUM_SPLITS, MN,
        SPLIT_MODE: tl.constexpr,
    ):
        # Store one program's [.., ..] fp32 tile ``acc`` at element offsets ``offs`` of the
        # [M, N] output. SPLIT_MODE 0: a single K split, write bf16 straight to ``out``.
        # 1: write the fp32 partial [split, M, N] for _splitk_reduce_kernel. 2: write the
        # partial, then the tile's last-arriving split sums all partials in split order
        # (deterministic: the same order whoever arrives last) and writes ``out``; it resets
        # the tile's arrival counter to 0, so the next launch (or graph replay) starts clean.
        if SPLIT_MODE == 0:
            tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(part_ptr + pid_s * MN + offs, acc, mask=mask)
            if SPLIT_MODE == 2:
                tl.debug_barrier()  # every thread's partial is stored before the release below
                arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
                if arrived == NUM_SPLITS - 1:
                    total = tl.zeros_like(acc)
                    for s in range(NUM_SPLITS):
                        # .cg: read L2, never a stale L1 line of another SM's partial
                        total += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0, cache_modifier=".cg")
                    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)
                    tl.store(cnt_ptr + tile, 0)

    @triton.jit
    def _e4m3_to_bf16(w):
        """e4m3 -> bf16 with integer ops and one bf16 multiply per two values.

        Why: the compiler's cast goes e4m3 -> fp16 -> bf16, and those conversion instructions
        (one per two codes, then one per value) queue on the SM's MIO pipe; Nsight Compute
        showed the decode GEMM issue-bound there at 43% of DRAM bandwidth. Here each byte's
        exponent and mantissa bits move to their bf16 places (``(b & 0x7F) << 4``, the sign
        to bit 15), which is the value times 2^-120, and a bf16 multiply by 2^120 undoes that,
        subnormal codes included: bit-identical to ``torch``'s cast for every non-NaN code
        (checked on the H200 by ``bench/kernels.py --check``). Four codes per 32-bit register;
        the interpreter runs no PTX, so its fp32 path uses the plain cast."""
        return tl.inline_asm_elementwise(
            """{
            .reg .b32 a, b, t, k;
            mov.b32 k, 0x7B807B80;
            prmt.b32 a, $2, 0, 0x1404;
            prmt.b32 b, $2, 0, 0x3424;
            shr.b32 t, a, 4;
            and.b32 t, t, 0x07F007F0;
            and.b32 a, a, 0x80008000;
            or.b32 a, a, t;
            mul.rn.bf16x2 $0, a, k;
            shr.b32 t, b, 4;
            and.b32 t, t, 0x07F007F0;
            and.b32 b, b, 0x80008000;
            or.b32 b, b, t;
            mul.rn.bf16x2 $1, b, k;
            }""",
            "=r,=r,r", [w.to(tl.uint8, bitcast=True)], dtype=tl.bfloat16, is_pure=True, pack=4,
        )

    # M, loop bounds and the scale stride stay unspecialised: they change nothing in the
    # generated code but would compile one variant per value class (== 1, % 16).
    @triton.jit(do_not_specialize=["M", "stride_wsn", "K_BLOCKS_PER_SPLIT", "KB", "NUM_SPLITS"])
    def _w8a16_skinny_kernel(
        x_ptr, w_ptr, ws_ptr, out_ptr, part_ptr, cnt_ptr,
        M, N, K,
        stride_xm, stride_wn, stride_wsn,
        K_BLOCKS_PER_SPLIT,
        KB,
        NUM_SPLITS,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SWAP_AB: tl.constexpr,
        FP32_DOT: tl.constexpr,
        SPLIT_MODE: tl.constexpr,
    ):
        # out[m, n] = sum_k x[m, k] * w[n, k] * ws[n // 128, k // 128], this program's K split only
        # SWAP_AB computes the transposed tile w @ x^T so the weight tile (BLOCK_N >= 64
        # rows) is the MMA's M operand: Hopper's wgmma needs M >= 64 and can take that
        # operand straight from registers after the fp8 -> bf16 conversion, while the
        # token count (often 1) only has to fill the N >= 8 side.
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        pid_m = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_mask = offs_m < M
        n_mask = offs_n < N
        kb0 = pid_s * K_BLOCKS_PER_SPLIT
        if SWAP_AB:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # BLOCK_N divides 128, so the weight scale is one scalar per (tile, k-block).
        ws_row = ws_ptr + ((pid_n * BLOCK_N) // BLOCK_K) * stride_wsn
        kb_end = tl.minimum(kb0 + K_BLOCKS_PER_SPLIT, KB)
        for kb in range(kb0, kb_end):
            kk = kb * BLOCK_K + offs_k
            k_mask = kk < K
            w = tl.load(
                w_ptr + offs_n[:, None] * stride_wn + kk[None, :],
                mask=n_mask[:, None] & k_mask[None, :], other=0.0,
            )
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + kk[None, :],
                mask=m_mask[:, None] & k_mask[None, :], other=0.0,
            )
            ws = tl.load(ws_row + kb)
            if SWAP_AB:
                if FP32_DOT:
                    part = tl.dot(w.to(tl.float32), tl.trans(x.to(tl.float32)))
                else:
                    part = tl.dot(_e4m3_to_bf16(w), tl.trans(x))
            else:
                if FP32_DOT:
                    part = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)))
                else:
                    part = tl.dot(x, tl.trans(_e4m3_to_bf16(w)))
            acc += part * ws
        if SWAP_AB:
            offs = offs_m[None, :] * N + offs_n[:, None]
            mask = m_mask[None, :] & n_mask[:, None]
        else:
            offs = offs_m[:, None] * N + offs_n[None, :]
            mask = m_mask[:, None] & n_mask[None, :]
        _finish_split_k(acc, offs, mask, out_ptr, part_ptr, cnt_ptr, pid_m * tl.num_programs(0) + pid_n,
                        pid_s, NUM_SPLITS, M * N, SPLIT_MODE)

    @triton.jit
    def _splitk_reduce_kernel(
        part_ptr, out_ptr, MN, SPLIT: tl.constexpr, BLOCK: tl.constexpr
    ):
        # Sum fp32 partials [SPLIT, M*N] -> out [M*N] (bf16), fixed order: deterministic.
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < MN
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLIT):
            acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)

    # M and the activation scales' stride follow each step's row count and only bound masks:
    # not specialized, so one compiled variant serves every step.
    @triton.jit(do_not_specialize=["M", "stride_asg"])
    def _w8a8_block_gemm_kernel(
        a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr,
        M, N, K,
        stride_am, stride_asm, stride_asg, stride_bn, stride_bsn, stride_cm,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
        FP32_DOT: tl.constexpr,
    ):
        # C = sum_kb (A_kb @ B_kb^T) * as[m, kb] * bs[n // 128, kb]; A, B e4m3; fp32 acc.
        pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_mask = offs_m < M
        n_mask = offs_n < N
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
        b_ptrs = b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None]
        as_ptrs = as_ptr + offs_m * stride_asm
        bs_ptrs = bs_ptr + (offs_n // BLOCK_K) * stride_bsn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k_blocks = tl.cdiv(K, BLOCK_K)
        for kb in range(k_blocks):
            a = tl.load(a_ptrs, mask=m_mask[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=n_mask[None, :], other=0.0)
            a_s = tl.load(as_ptrs + kb * stride_asg, mask=m_mask, other=0.0)
            if FP32_DOT:
                part = tl.dot(a.to(tl.float32), b.to(tl.float32))
            else:
                part = tl.dot(a, b)
            if BLOCK_N <= BLOCK_K:  # the tile lies in one 128-row scale block: fold b_s into the row scales
                acc += part * (a_s * tl.load(bs_ptr + (pid_n * BLOCK_N // BLOCK_K) * stride_bsn + kb))[:, None]
            else:
                acc += part * a_s[:, None] * tl.load(bs_ptrs + kb, mask=n_mask, other=0.0)[None, :]
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _require_triton(t: torch.Tensor) -> None:
    if not triton_available_for(t):
        raise RuntimeError(
            "Triton kernel requested but Triton cannot run here (needs CUDA, or "
            "TRITON_INTERPRET=1 with CPU tensors)"
        )


# Fastest launch config per decode GEMM shape, from one H200 sweep (torch 2.11, Triton 3.6;
# `python bench/kernels.py --only gemm_tune --sweep`, rows in
# results/bench/kernels_sweep_decode.json): block_n {32, 64, 128} x split-K (about 1-8 waves
# of programs) x num_warps {2, 4, 8} x num_stages {2..6}, one-launch and two-launch split-K,
# each timed as CUDA-graph replays over weight copies larger than the L2, the three fastest
# re-timed. Key: (N, K, M class), the class being 1 (M = 1), 8 (2 <= M <= 16) or 32
# (17 <= M <= 64), the batch sizes measured. Shapes: W3's q_a, kv_a, q_b, o_proj, dense
# gate/up, down, and q_b / o_proj under TP2 and a 4096 x 7168 MLP. Comments: us before ->
# after at the measured M (before = the previous heuristic, bn=64 split~8 w=4 st=4 two-launch).
_SKINNY_TUNED: dict[tuple[int, int, int], SkinnyConfig] = {
    (1536, 7168, 1): SkinnyConfig(64, 10, 4, 3),  # q_a 10.7 -> 9.5; bit-level conversion: 9.0 -> 8.5
    (576, 7168, 1): SkinnyConfig(32, 14, 4, 3),  # kv_a 8.0 -> 6.4
    (24576, 1536, 1): SkinnyConfig(32, 1, 2, 3),  # q_b 19.7 -> 17.3
    (7168, 16384, 1): SkinnyConfig(64, 9, 4, 3),  # o_proj 49.4 -> 46.9
    (18432, 7168, 1): SkinnyConfig(64, 4, 4, 4),  # gate, up 53.2 -> 50.4; bit-level conversion: 55.1 -> 43.7
    (7168, 18432, 1): SkinnyConfig(128, 9, 2, 3),  # down 54.6 -> 53.5; bit-level conversion: 45.5 -> 41.6
    (12288, 1536, 1): SkinnyConfig(32, 1, 4, 3),  # q_b TP2 13.2 -> 10.7
    (7168, 8192, 1): SkinnyConfig(64, 8, 4, 3),  # o_proj TP2 28.0 -> 26.2
    (4096, 7168, 1): SkinnyConfig(64, 8, 4, 3),  # 17.7 -> 15.6; bit-level conversion: 14.3 -> 13.4
    (1536, 7168, 8): SkinnyConfig(64, 10, 4, 3),  # q_a 10.7 -> 9.6; bit-level conversion: 9.5 -> 8.8
    (576, 7168, 8): SkinnyConfig(32, 14, 4, 3),  # kv_a 8.5 -> 6.6
    (24576, 1536, 8): SkinnyConfig(32, 1, 2, 3),  # q_b 19.8 -> 17.8
    (7168, 16384, 8): SkinnyConfig(64, 9, 4, 3),  # o_proj 49.9 -> 47.8
    (18432, 7168, 8): SkinnyConfig(64, 4, 4, 4),  # gate, up 55.6 -> 52.5; bit-level conversion: 55.2 -> 46.8
    (7168, 18432, 8): SkinnyConfig(128, 9, 2, 3),  # down 55.2 -> 53.5; bit-level conversion: 54.9 -> 43.9
    (12288, 1536, 8): SkinnyConfig(32, 1, 4, 4),  # q_b TP2 13.4 -> 10.8
    (7168, 8192, 8): SkinnyConfig(64, 8, 4, 3),  # o_proj TP2 28.6 -> 26.2
    (4096, 7168, 8): SkinnyConfig(64, 8, 4, 3),  # 17.9 -> 15.6; bit-level conversion: 14.5 -> 13.7
    # at 32 rows the last split's serial sum of a 32 x block_n tile often costs what the
    # second launch saves: the two-launch twin was as fast or faster for most shapes
    (1536, 7168, 32): SkinnyConfig(64, 10, 4, 3, fused_reduce=False),  # q_a 11.8 -> 11.7
    (576, 7168, 32): SkinnyConfig(32, 14, 8, 3),  # kv_a 8.9 -> 8.5
    (24576, 1536, 32): SkinnyConfig(64, 1, 4, 3),  # q_b 25.1 -> 20.1 (auto: cuBLAS 18.2)
    (7168, 16384, 32): SkinnyConfig(64, 9, 4, 3, fused_reduce=False),  # o_proj 59.5 -> 57.8 (cuBLAS 52.0)
    (18432, 7168, 32): SkinnyConfig(64, 4, 4, 3),  # gate, up 70.0 -> 63.0 (cuBLAS 59.7)
    (7168, 18432, 32): SkinnyConfig(64, 9, 4, 3, fused_reduce=False),  # down 66.1 -> 65.6 (cuBLAS 57.5)
    (12288, 1536, 32): SkinnyConfig(64, 1, 4, 3),  # q_b TP2 16.7 -> 15.0
    (7168, 8192, 32): SkinnyConfig(64, 8, 4, 3, fused_reduce=False),  # o_proj TP2 33.5 -> 32.8 (cuBLAS 28.6)
    (4096, 7168, 32): SkinnyConfig(64, 4, 4, 3, fused_reduce=False),  # 19.9 -> 19.4
}


def default_skinny_config(m: int, n: int, k: int, device: torch.device) -> SkinnyConfig:
    """The measured config of ``_SKINNY_TUNED`` for known shapes; otherwise a rule fitted
    to the same sweep.

    Decode is bound by bytes in flight: the fastest configs ran about 8 programs per SM
    (e.g. o_proj 112 N tiles x 9 splits, dense gate 288 x 4, kv_a 18 x 14), with 4 warps
    and 3 stages, BLOCK_N 32 for N <= 4096 up to 16 rows (more tiles to split over) and
    64 otherwise. A split keeps at least 4 k-blocks (512 K) so each program's pipeline
    has work, and at least 8 once the N tiles alone fill the SMs (q_b, 12 k-blocks, ran
    fastest unsplit). On the 24 swept cells whose grid holds the rule's choice it is within
    5% of the best in 20 and 15-23% slower in 4 (q_b under TP2 at M <= 16; kv_a and the
    4096-wide MLP at M = 32), which is why the measured table comes first.
    """
    tuned = _SKINNY_TUNED.get((n, k, 1 if m == 1 else 8 if m <= 16 else 32))
    if tuned is not None:
        return tuned
    sms = _num_sms(device)
    block_n = 32 if n <= 4096 and m <= 16 else 64
    tiles = math.ceil(n / block_n) * math.ceil(m / 64)
    kb = math.ceil(k / BLOCK)
    split = max(1, min(round(8 * sms / tiles), kb // (8 if tiles >= sms else 4)))
    return SkinnyConfig(block_n=block_n, split_k=math.ceil(kb / math.ceil(kb / split)), num_warps=4, num_stages=3)


# Arrival counters of the one-launch split-K reduction, per device. Every call's tiles
# count up from 0 and each tile's last split resets its counter, so one zeroed buffer
# serves all calls and graph replays. Consequence: two skinny GEMMs must not run at the
# same time on one device (the engine runs decode on one stream). A grown buffer
# replaces the old one for new calls, but the old one is kept: captured graphs hold its
# address.
_SPLIT_COUNTERS: dict[torch.device, list[torch.Tensor]] = {}


def _split_counters(device: torch.device, tiles: int) -> torch.Tensor:
    bufs = _SPLIT_COUNTERS.setdefault(device, [])
    if not bufs or bufs[-1].numel() < tiles:
        bufs.append(torch.zeros(max(tiles, 1 << 16), dtype=torch.int32, device=device))
    return bufs[-1]


def fp8_gemm_w8a16_skinny(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    config: SkinnyConfig | None = None,
) -> torch.Tensor:
    """Decode-oriented W8A16 GEMM: bf16 ``x [M, K]`` x e4m3 ``weight [N, K]`` -> bf16 ``[M, N]``.

    Any M works (BLOCK_M adapts up to 64; larger M is tiled), but it is meant for M <= 64.
    """
    _require_triton(x)
    n, k = _check_weight(weight, weight_scale_inv)
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [M, {k}], got {tuple(x.shape)}")
    if x.dtype != torch.bfloat16:
        raise TypeError(f"x must be bf16, got {x.dtype}")
    if x.stride(1) != 1:
        x = x.contiguous()
    m = x.shape[0]
    cfg = config or default_skinny_config(m, n, k, x.device)
    if BLOCK % cfg.block_n != 0:
        raise ValueError(f"block_n={cfg.block_n} must divide {BLOCK}")
    out = torch.empty(m, n, dtype=torch.bfloat16, device=x.device)
    if m == 0 or n == 0:
        return out
    block_m = min(64, max(16, triton.next_power_of_2(m)))
    kb = math.ceil(k / BLOCK)
    per = math.ceil(kb / max(1, cfg.split_k))
    split = math.ceil(kb / per)
    grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, block_m))
    mode = 0 if split == 1 else 2 if cfg.fused_reduce else 1
    part = out if mode == 0 else torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    counters = _split_counters(x.device, grid[0] * grid[2]) if mode == 2 else out
    _w8a16_skinny_kernel[grid](
        x, weight, weight_scale_inv, out, part, counters,
        m, n, k,
        x.stride(0), weight.stride(0), weight_scale_inv.stride(0),
        per, kb, split,
        BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_K=BLOCK, SWAP_AB=cfg.swap_ab,
        FP32_DOT=interpret_mode(), SPLIT_MODE=mode,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if mode == 1:
        mn = m * n
        rb = 1024
        _splitk_reduce_kernel[(triton.cdiv(mn, rb),)](part, out, mn, SPLIT=split, BLOCK=rb)
    return out


def fp8_gemm_w8a8(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """Block-scaled FP8 GEMM: e4m3 ``a [M, K]`` (1x128 scales ``a_scale [M, K/128]``, any
    strides) x e4m3 ``weight [N, K]`` (128x128 scales) -> ``[M, N]`` in ``out_dtype``.

    Requires ``K % 128 == 0`` (activation groups must not straddle the end).
    """
    _require_triton(a)
    n, k = _check_weight(weight, weight_scale_inv)
    if a.dim() != 2 or a.shape[1] != k or a.dtype != FP8_DTYPE:
        raise ValueError(f"a must be e4m3 [M, {k}], got {a.dtype} {tuple(a.shape)}")
    if k % BLOCK != 0:
        raise ValueError(f"K={k} must be a multiple of {BLOCK} for the W8A8 kernel")
    m = a.shape[0]
    if tuple(a_scale.shape) != (m, k // BLOCK) or a_scale.dtype != torch.float32:
        raise ValueError(
            f"a_scale must be fp32 [M, K/128] = ({m}, {k // BLOCK}), got "
            f"{a_scale.dtype} {tuple(a_scale.shape)}"
        )
    if a.stride(1) != 1:
        a = a.contiguous()
    cfg = config or GemmConfig()
    c = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return c
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _w8a8_block_gemm_kernel[grid](
        a, a_scale, weight, weight_scale_inv, c,
        m, n, k,
        a.stride(0), a_scale.stride(0), a_scale.stride(1), weight.stride(0),
        weight_scale_inv.stride(0), c.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=BLOCK, GROUP_M=cfg.group_m,
        FP32_DOT=interpret_mode(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return c


def scaled_mm_is_safe(m: int, n: int, k: int) -> bool:
    """Shapes for which cuBLAS block-scaled ``torch._scaled_mm`` is known to be correct.

    ``K/128`` must be a multiple of 4 (otherwise results are silently wrong on torch 2.11),
    N a multiple of 128 (no partial weight-scale blocks). M is padded by the caller.
    """
    return k % (4 * BLOCK) == 0 and n % BLOCK == 0 and m > 0


def fp8_gemm_scaled_mm(
    x: torch.Tensor, weight: torch.Tensor, weight_scale_inv: torch.Tensor
) -> torch.Tensor:
    """Large-M path: quantize ``x`` 1x128 (column-major scales, M padded to 4) and call
    ``torch._scaled_mm`` with DeepSeek block scales. Raises if the shape is unsafe."""
    n, k = _check_weight(weight, weight_scale_inv)
    m = x.shape[0]
    if not scaled_mm_is_safe(m, n, k):
        raise ValueError(f"torch._scaled_mm block-scaled path unsafe for M={m} N={n} K={k}")
    if not x.is_cuda:
        raise RuntimeError("torch._scaled_mm path needs CUDA tensors")
    q, s = per_token_group_quant_fp8(x, column_major_scales=True, pad_rows_to=4)
    out = torch._scaled_mm(
        q, weight.t(), scale_a=s, scale_b=weight_scale_inv.t(), out_dtype=torch.bfloat16
    )
    return out[:m] if out.shape[0] != m else out


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    bias: torch.Tensor | None = None,
    backend: Backend = "auto",
    skinny_config: SkinnyConfig | None = None,
    gemm_config: GemmConfig | None = None,
) -> torch.Tensor:
    """``y = x @ dequant(weight, weight_scale_inv).T (+ bias)`` for DeepSeek block-FP8 weights.

    Args:
        x: bf16 ``[..., K]``.
        weight: e4m3fn ``[N, K]`` contiguous.
        weight_scale_inv: fp32 ``[ceil(N/128), ceil(K/128)]``.
        bias: optional ``[N]`` (added in the output dtype).
        backend: ``"auto"`` (default: see module docstring), or force ``"skinny"``,
            ``"w8a8"``, ``"scaled_mm"`` or ``"torch"``.
        skinny_config / gemm_config: optional explicit launch configs (tests, tuning).

    Returns:
        bf16 ``[..., N]``.

    No host synchronization on any path (safe under CUDA graph capture, except the
    cuBLAS path which is capture-safe as long as torch's is).
    """
    n, k = _check_weight(weight, weight_scale_inv)
    if x.shape[-1] != k:
        raise ValueError(f"x last dim {x.shape[-1]} != weight K {k}")
    if x.dtype != torch.bfloat16:
        raise TypeError(f"x must be bf16, got {x.dtype}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if backend == "auto":
        if not (x2.is_cuda and HAS_TRITON):
            backend = "torch"
        elif m <= SKINNY_M_MAX and not (
            m >= SCALED_MM_MIN_M
            and n * k >= SCALED_MM_MIN_WEIGHT_BYTES
            and scaled_mm_is_safe(m, n, k)
        ):
            backend = "skinny"
        elif scaled_mm_is_safe(m, n, k):
            backend = "scaled_mm"
        elif k % BLOCK == 0:
            backend = "w8a8"
        else:
            backend = "skinny"
    if backend == "torch":
        y = fp8_linear_torch(x2, weight, weight_scale_inv)
    elif backend == "skinny":
        y = fp8_gemm_w8a16_skinny(x2, weight, weight_scale_inv, skinny_config)
    elif backend == "scaled_mm":
        y = fp8_gemm_scaled_mm(x2, weight, weight_scale_inv)
    elif backend == "w8a8":
        q, s = per_token_group_quant_fp8(x2)
        y = fp8_gemm_w8a8(q, s, weight, weight_scale_inv, torch.bfloat16, gemm_config)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, n)
