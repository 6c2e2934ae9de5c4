"""Fused mixture-of-experts (DeepSeek-V3 routed experts) with grouped block-FP8 GEMMs.

Pipeline (no Python loop over experts, no host synchronisation, so it can be captured in
a CUDA graph):

1. :func:`moe_align` - sort the ``T*k`` (token, slot) pairs by expert and pad each
   expert's run to a multiple of ``BLOCK_M`` so every M-tile of the grouped GEMM belongs
   to exactly one expert. The padded length is data dependent, so buffers are sized by
   the static bound ``floor(T*k/BM) + min(E, T*k)`` tiles and each kernel program first
   reads the device-side ``num_tokens_post_padded`` and exits if its tile is unused.
2. GEMM1 (gate/up): for every tile, gather token rows of ``x`` (1x128-quantized to e4m3
   for the FP8 variant), multiply by the tile's expert ``w13[e]`` (``[2I, H]``), computing
   the gate (rows ``[0, I)``) and up (rows ``[I, 2I)``) halves in the same program, and
   write ``silu(gate) * up`` (bf16) in sorted order: the ``[T*k, 2I]`` intermediate never
   touches memory.
3. The ``[P, I]`` activation is 1x128-quantized (FP8 variant only).
4. GEMM2 (down): ``w2[e]`` (``[H, I]``), scaled by the routing weight in fp32 and
   scattered to the slot's row of a ``[T*k, H]`` bf16 buffer.
5. Combine: sum over the k slots of each token in fp32 (fixed order, deterministic).
For decode (<= 256 slots) step 1 is a single Triton program, so a decode MoE is six
launches: quantize x, align, GEMM1, quantize h, GEMM2, combine.

Dtypes / layouts:
    x:              bf16 ``[T, H]``
    w13:            e4m3 ``[E, 2I, H]`` (gate rows then up rows), or bf16 for the bf16 variant
    w13_scale:      fp32 ``[E, ceil(2I/128), ceil(H/128)]`` (128x128 blocks); ``None`` for bf16
    w2:             e4m3 ``[E, H, I]`` (or bf16)
    w2_scale:       fp32 ``[E, ceil(H/128), ceil(I/128)]``; ``None`` for bf16
    topk_ids:       int ``[T, k]`` (int32/int64), values in ``[0, E)``
    topk_weights:   fp32 (or bf16) ``[T, k]``; routed scaling (DeepSeek's 2.5) is the
                    caller's to fold in.
    output:         bf16 ``[T, H]``
The FP8 variant requires ``H % 128 == 0`` and ``I % 128 == 0`` (true for V3: 7168, 2048).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fp8_quant import (
    FP8_DTYPE,
    FP8_MAX,
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

__all__ = ["MoeConfig", "fused_moe", "fused_moe_torch", "moe_align"]

BLOCK_K: int = 128
# moe_align uses one Triton program (O(S^2) rank computation) up to this many slots
SMALL_ALIGN_MAX_SLOTS: int = 256


@dataclass(frozen=True)
class MoeConfig:
    """Launch config for both grouped GEMMs. ``block_m`` is also the alignment of each
    expert's token run; ``block_n1`` tiles the intermediate dim of GEMM1 (each program
    holds two accumulators: gate and up), ``block_n2`` the hidden dim of GEMM2."""

    block_m: int = 64
    block_n1: int = 64
    block_n2: int = 128
    num_warps: int = 4
    num_stages: int = 3
    # FP8 only: GEMM1 as a plain grouped GEMM over all 2I outputs (one accumulator,
    # block_n1 wide) writing [P, 2I] bf16, then a SiLU*up + quantize kernel. Costs one
    # extra pass over [P, 2I] but lets GEMM1 use larger single-accumulator tiles; the
    # prefill default (see default_moe_config). Rounds gate and up to bf16 before SiLU
    # (like an unfused bf16 model).
    unfused_gate_up: bool = False
    num_warps1: int | None = None  # GEMM1 warps override (default num_warps)
    # Row tiles per program group (kernels/tile_order.py); 0: one group, row tiles fastest.
    # Prefill wants a few (each expert's token tiles stay in L2 while every column tile of
    # its weight passes); decode has about one tile per expert, so the order is moot there.
    group_m: int = 0


def default_moe_config(
    num_tokens: int, top_k: int, num_experts: int, use_fp8: bool = True
) -> MoeConfig:
    """Tile choice tuned on H200 (bench/kernels.py --sweep, V3 shapes).

    Decode (<= 16 tokens per expert on average): BLOCK_M=16 so padding wastes little,
    wide N tiles (128) so each program streams more weight per step. FP8 prefill: gate/up
    as one grouped GEMM over all 2I outputs in 64x128 tiles, then SiLU*up + quantize, and
    64x128 down tiles; with one weight scale per tile and K step this is 4-9% faster than
    the fused two-accumulator kernel at 4K-16K tokens, equal at 1K
    (results/bench/kernels_scale_fold.json); programs in groups of 8 row tiles, so each
    expert's tokens are read once instead of once per column tile: 7-13% faster at 1K-16K
    tokens (results/bench/kernels_prefill_moe_grouped.json). bf16 prefill: 64x64 gate and
    up tiles (two accumulators); its operands are twice the bytes, so pipelining depth is
    cut to stay inside the 227 KB of shared memory.
    """
    per_expert = num_tokens * top_k / max(num_experts, 1)
    if per_expert <= 16:
        cfg = MoeConfig(block_m=16, block_n1=128, block_n2=128, num_warps=4, num_stages=3)
    elif use_fp8:
        return MoeConfig(block_m=64, block_n1=128, block_n2=128, num_warps=4, num_stages=4, unfused_gate_up=True,
                         group_m=8)
    else:
        cfg = MoeConfig(block_m=64, block_n1=64, block_n2=128, num_warps=4, num_stages=4)
    if not use_fp8:
        # bytes per stage of GEMM1: A tile + gate & up tiles, 2 bytes each
        stage = 2 * BLOCK_K * (cfg.block_m + 2 * cfg.block_n1)
        stages = max(1, min(cfg.num_stages, (200 * 1024) // stage))
        cfg = MoeConfig(cfg.block_m, cfg.block_n1, cfg.block_n2, cfg.num_warps, stages)
    return cfg


def moe_align(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort (token, slot) pairs by expert and pad each expert's run to ``block_m``.

    Returns:
        sorted_ids: int32 ``[P]``; entry = flat slot index ``t*k + j`` or the sentinel
            ``T*k`` for padding; ``P = block_m * max_tiles``.
        tile_expert: int32 ``[max_tiles]``; expert of each tile (``num_experts`` for
            unused tiles).
        num_post_padded: int32 ``[1]``; used rows of ``sorted_ids`` (device tensor).
    All work is on device; no ``.item()``.
    """
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be [T, k], got {tuple(topk_ids.shape)}")
    dev = topk_ids.device
    s = topk_ids.numel()
    max_tiles = s // block_m + min(num_experts, s)
    if 0 < s <= SMALL_ALIGN_MAX_SLOTS and num_experts <= 1024 and triton_available_for(topk_ids):
        sorted_ids = torch.empty(max_tiles * block_m, dtype=torch.int32, device=dev)
        tile_expert = torch.empty(max_tiles, dtype=torch.int32, device=dev)
        num_post = torch.empty(1, dtype=torch.int32, device=dev)
        _moe_align_small_kernel[(1,)](
            topk_ids.reshape(-1).contiguous(), sorted_ids, tile_expert, num_post,
            s, num_experts, max_tiles * block_m, max_tiles,
            BLOCK_S=max(16, triton.next_power_of_2(s)),
            BLOCK_E=max(16, triton.next_power_of_2(num_experts)),
            BLOCK_M=block_m, BLOCK_F=256, num_warps=8,
        )
        return sorted_ids, tile_expert, num_post
    flat = topk_ids.reshape(-1).long()
    counts = torch.zeros(num_experts, dtype=torch.long, device=dev)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    unpadded_start = torch.cumsum(counts, 0) - counts
    sorted_e, order = torch.sort(flat, stable=True)
    rank = torch.arange(s, device=dev) - unpadded_start[sorted_e]
    dest = padded_start[sorted_e] + rank
    sorted_ids = torch.full((max_tiles * block_m,), s, dtype=torch.int32, device=dev)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    tile_start = torch.arange(max_tiles, device=dev) * block_m
    tile_expert = torch.searchsorted(padded_end, tile_start, right=True).to(torch.int32)
    num_post = padded_end[-1:].to(torch.int32)
    return sorted_ids, tile_expert, num_post


if HAS_TRITON:

    # The kernels' step-varying integers (slot, row and tile counts) only bound masks and loops:
    # do_not_specialize, so one compiled variant serves every step's shape.
    @triton.jit(do_not_specialize=["S", "P", "MAX_TILES"])
    def _moe_align_small_kernel(
        ids_ptr, sorted_ptr, tile_expert_ptr, num_post_ptr,
        S, E, P, MAX_TILES,
        BLOCK_S: tl.constexpr,
        BLOCK_E: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_F: tl.constexpr,
    ):
        # Single-program version of moe_align for few slots (decode): one launch instead
        # of ~20 small torch kernels. Same output as the torch path (stable order).
        offs = tl.arange(0, BLOCK_S)
        smask = offs < S
        e = tl.load(ids_ptr + offs, mask=smask, other=-1).to(tl.int32)
        eo = tl.arange(0, BLOCK_E)
        onehot = e[None, :] == eo[:, None]  # [BLOCK_E, BLOCK_S]
        counts = tl.sum(onehot.to(tl.int32), axis=1)
        padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        pend = tl.cumsum(padded, axis=0)
        pstart = pend - padded
        total = tl.sum(padded, axis=0)
        before = (e[:, None] == e[None, :]) & (offs[None, :] < offs[:, None])
        rank = tl.sum(before.to(tl.int32), axis=1)
        start_e = tl.sum(tl.where(onehot, pstart[:, None], 0), axis=0)
        dest = start_e + rank
        for p0 in range(0, P, BLOCK_F):
            pp = p0 + tl.arange(0, BLOCK_F)
            tl.store(sorted_ptr + pp, tl.full((BLOCK_F,), 0, tl.int32) + S, mask=pp < P)
        tl.debug_barrier()
        tl.store(sorted_ptr + dest, offs, mask=smask)
        for t0 in range(0, MAX_TILES, BLOCK_F):
            tt = t0 + tl.arange(0, BLOCK_F)
            ts = tt * BLOCK_M
            ex = tl.sum((pend[None, :] <= ts[:, None]).to(tl.int32), axis=1)
            tl.store(tile_expert_ptr + tt, tl.minimum(ex, E), mask=tt < MAX_TILES)
        tl.store(num_post_ptr, total)

    @triton.jit
    def _moe_combine_kernel(slots_ptr, out_ptr, H, TOPK: tl.constexpr, BLOCK_H: tl.constexpr):
        # out[t] = sum_j slots[t*k + j] in fp32, fixed order (deterministic).
        t = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        mask = offs < H
        acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
        for j in tl.static_range(TOPK):
            acc += tl.load(slots_ptr + (t * TOPK + j).to(tl.int64) * H + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + t.to(tl.int64) * H + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _tile_slots(pid_m, pid_n, N, sorted_ids_ptr, tile_expert_ptr, num_valid, top_k,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GATHER_A: tl.constexpr):
        # The tile of both grouped GEMMs: its expert, its BLOCK_M rows of the expert-sorted slot
        # list (padding slots are >= num_valid), the row of A each reads (the slot's token when
        # gathering from x, else the row itself) and its BLOCK_N output columns.
        e = tl.load(tile_expert_ptr + pid_m).to(tl.int64)
        offs_p = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        slot = tl.load(sorted_ids_ptr + offs_p)
        if GATHER_A:
            a_row = (slot // top_k).to(tl.int64)
        else:
            a_row = offs_p.to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        return e, offs_p, slot, slot < num_valid, a_row, offs_n, offs_n < N

    @triton.jit
    def _scaled_dot(acc, a, b, a_s, b_s_tile, b_s_cols, kb, n_mask,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_FP8: tl.constexpr, FP32_DOT: tl.constexpr):
        # acc += a . b, with FP8 block scales folded in: a's per-row 1x128 scale times the
        # weight's 128x128 block scale of this K step. A tile no wider than a scale block lies
        # inside one (N % 128 == 0), so its weight scale is one number: one multiply-add per
        # element instead of two.
        if FP32_DOT:
            part = tl.dot(a.to(tl.float32), b.to(tl.float32))
        else:
            part = tl.dot(a, b)
        if USE_FP8:
            if BLOCK_N <= BLOCK_K:
                acc += part * (a_s * tl.load(b_s_tile + kb))[:, None]
            else:
                acc += part * a_s[:, None] * tl.load(b_s_cols + kb, mask=n_mask, other=0.0)[None, :]
        else:
            acc += part
        return acc

    @triton.jit
    def _expert_tile_gemm(
        a_ptr, as_ptr, b_ptr, bs_ptr, e, a_row, valid, pid_n, offs_n, n_mask, K, up_rows,
        stride_am, stride_asm, stride_asg, stride_be, stride_bn, stride_bse, stride_bsn,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        USE_FP8: tl.constexpr, FP32_DOT: tl.constexpr, GATE_UP: tl.constexpr,
    ):
        # The K loop of both grouped GEMMs: acc[m, n] = a[a_row[m]] . b[e, offs_n[n]] over K.
        # GATE_UP also accumulates rows offs_n + up_rows of b (GEMM1's up half) from the same
        # loads of a; acc_up stays zero otherwise.
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + a_row[:, None] * stride_am + offs_k[None, :]
        b_ptrs = b_ptr + e * stride_be + offs_n[None, :] * stride_bn + offs_k[:, None]
        bu_ptrs = b_ptrs + up_rows * stride_bn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        bs_tile = bs_ptr
        bs_cols = bs_ptr
        if USE_FP8:
            as_ptrs = as_ptr + a_row * stride_asm
            bs_tile = bs_ptr + e * stride_bse + (pid_n * BLOCK_N // BLOCK_K) * stride_bsn
            bs_cols = bs_ptr + e * stride_bse + (offs_n // BLOCK_K) * stride_bsn
        # up_rows is a multiple of 128 (the FP8 variant requires I % 128 == 0): same scale column offset
        bs_up = (up_rows // BLOCK_K) * stride_bsn
        for kb in range(tl.cdiv(K, BLOCK_K)):
            k_mask = (kb * BLOCK_K + offs_k) < K
            b_mask = n_mask[None, :] & k_mask[:, None]
            a = tl.load(a_ptrs, mask=valid[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=b_mask, other=0.0)
            if GATE_UP:
                bu = tl.load(bu_ptrs, mask=b_mask, other=0.0)
            if USE_FP8:
                a_s = tl.load(as_ptrs + kb * stride_asg, mask=valid, other=0.0)
            else:
                a_s = valid.to(tl.float32)  # no activation scales: _scaled_dot ignores it
            acc = _scaled_dot(acc, a, b, a_s, bs_tile, bs_cols, kb, n_mask, BLOCK_N, BLOCK_K, USE_FP8, FP32_DOT)
            if GATE_UP:
                acc_up = _scaled_dot(acc_up, a, bu, a_s, bs_tile + bs_up, bs_cols + bs_up, kb, n_mask,
                                     BLOCK_N, BLOCK_K, USE_FP8, FP32_DOT)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
            if GATE_UP:
                bu_ptrs += BLOCK_K
        return acc, acc_up

    @triton.jit(do_not_specialize=["num_valid", "num_tiles"])
    def _moe_gemm1_kernel(
        a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr,
        sorted_ids_ptr, tile_expert_ptr, num_post_ptr,
        I, K, num_valid, top_k,
        stride_am, stride_asm, stride_asg,
        stride_be, stride_bn, stride_bse, stride_bsn,
        stride_cm, num_tiles,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        USE_FP8: tl.constexpr,
        FP32_DOT: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        # c[p, n] = silu(a[tok(p)] . w13[e, n]) * (a[tok(p)] . w13[e, I + n]),  n < I
        pid_m, pid_n = grouped_tile(tl.program_id(0), num_tiles, tl.cdiv(I, BLOCK_N), GROUP_M)
        if pid_m * BLOCK_M >= tl.load(num_post_ptr):
            return
        e, offs_p, slot, valid, a_row, offs_n, n_mask = _tile_slots(
            pid_m, pid_n, I, sorted_ids_ptr, tile_expert_ptr, num_valid, top_k, BLOCK_M, BLOCK_N, True)
        acc_g, acc_u = _expert_tile_gemm(
            a_ptr, as_ptr, b_ptr, bs_ptr, e, a_row, valid, pid_n, offs_n, n_mask, K, I,
            stride_am, stride_asm, stride_asg, stride_be, stride_bn, stride_bse, stride_bsn,
            BLOCK_M, BLOCK_N, BLOCK_K, USE_FP8, FP32_DOT, True)
        h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
        c_ptrs = c_ptr + offs_p[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, h.to(c_ptr.dtype.element_ty), mask=n_mask[None, :])

    @triton.jit(do_not_specialize=["num_valid", "num_tiles"])
    def _moe_grouped_gemm_kernel(
        a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, w_ptr,
        sorted_ids_ptr, tile_expert_ptr, num_post_ptr,
        N, K, num_valid,
        stride_am, stride_asm, stride_asg,
        stride_be, stride_bn, stride_bse, stride_bsn,
        stride_cm,
        top_k, num_tiles,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        USE_FP8: tl.constexpr,
        FP32_DOT: tl.constexpr,
        GROUP_M: tl.constexpr,
        GATHER_A: tl.constexpr = False,
        SCATTER_C: tl.constexpr = True,
    ):
        # Grouped GEMM over the sorted tiles. Down projection (default flags):
        #   c[slot(p), n] = topk_weight[slot(p)] * (a[p] . w2[e, n])
        # Unfused gate/up (GATHER_A, not SCATTER_C, no weight):
        #   c[p, n] = a[token(p)] . w13[e, n],  n < 2I
        pid_m, pid_n = grouped_tile(tl.program_id(0), num_tiles, tl.cdiv(N, BLOCK_N), GROUP_M)
        if pid_m * BLOCK_M >= tl.load(num_post_ptr):
            return
        e, offs_p, slot, valid, a_row, offs_n, n_mask = _tile_slots(
            pid_m, pid_n, N, sorted_ids_ptr, tile_expert_ptr, num_valid, top_k, BLOCK_M, BLOCK_N, GATHER_A)
        acc, _ = _expert_tile_gemm(
            a_ptr, as_ptr, b_ptr, bs_ptr, e, a_row, valid, pid_n, offs_n, n_mask, K, 0,
            stride_am, stride_asm, stride_asg, stride_be, stride_bn, stride_bse, stride_bsn,
            BLOCK_M, BLOCK_N, BLOCK_K, USE_FP8, FP32_DOT, False)
        if SCATTER_C:
            rw = tl.load(w_ptr + slot, mask=valid, other=0.0).to(tl.float32)
            acc = acc * rw[:, None]
            c_ptrs = c_ptr + slot[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])
        else:
            c_ptrs = c_ptr + offs_p[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=n_mask[None, :])

    @triton.jit(do_not_specialize=["P"])
    def _silu_mul_quant_kernel(
        gu_ptr, q_ptr, s_ptr, P, I, stride_gu, stride_q, stride_s,
        GROUP: tl.constexpr, BLOCK_M: tl.constexpr, FP8_MAX_C: tl.constexpr, EPS: tl.constexpr,
    ):
        # h = bf16(silu(gate) * up) for one 128-channel group of BLOCK_M rows, then 1x128
        # e4m3 quantization (same rounding sequence as the fused path).
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        g = tl.program_id(1)
        cols = g * GROUP + tl.arange(0, GROUP)
        rmask = rows < P
        base = gu_ptr + rows[:, None].to(tl.int64) * stride_gu + cols[None, :]
        gate = tl.load(base, mask=rmask[:, None], other=0.0).to(tl.float32)
        up = tl.load(base + I, mask=rmask[:, None], other=0.0).to(tl.float32)
        h = (gate / (1.0 + tl.exp(-gate)) * up).to(tl.bfloat16).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(h), axis=1), EPS)
        scale = amax / FP8_MAX_C
        q = tl.clamp(h / scale[:, None], -FP8_MAX_C, FP8_MAX_C)
        tl.store(q_ptr + rows[:, None].to(tl.int64) * stride_q + cols[None, :],
                 q.to(q_ptr.dtype.element_ty), mask=rmask[:, None])
        tl.store(s_ptr + rows * stride_s + g, scale, mask=rmask)


def fused_moe_torch(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor | None,
    w2: torch.Tensor,
    w2_scale: torch.Tensor | None,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference/fallback in fp32 torch: dequantized weights, unquantized activations.

    Loops over experts (fine for tests and CPU; the Triton path has no such loop).
    """
    t, h = x.shape
    k = topk_ids.shape[1]
    inter = w13.shape[1] // 2
    out = torch.zeros(t, h, dtype=torch.float32, device=x.device)
    flat_ids = topk_ids.reshape(-1)
    flat_w = topk_weights.reshape(-1).float()
    tok = torch.arange(t * k, device=x.device) // k
    for e in torch.unique(flat_ids).tolist():
        sel = (flat_ids == e).nonzero().squeeze(1)
        w1 = w13[e] if w13_scale is None else dequant_block_fp8_weight(w13[e], w13_scale[e])
        w2e = w2[e] if w2_scale is None else dequant_block_fp8_weight(w2[e], w2_scale[e])
        a = x[tok[sel]].float()
        gu = a @ w1.float().t()
        hmid = F.silu(gu[:, :inter]) * gu[:, inter:]
        y = (hmid @ w2e.float().t()) * flat_w[sel, None]
        out.index_add_(0, tok[sel], y)
    return out.to(x.dtype)


def _check_moe_args(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor | None,
    w2: torch.Tensor,
    w2_scale: torch.Tensor | None,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> tuple[bool, int, int, int]:
    if x.dim() != 2 or x.dtype != torch.bfloat16:
        raise ValueError(f"x must be bf16 [T, H], got {x.dtype} {tuple(x.shape)}")
    t, h = x.shape
    if w13.dim() != 3 or w2.dim() != 3:
        raise ValueError("w13 must be [E, 2I, H] and w2 [E, H, I]")
    e, two_i, h1 = w13.shape
    inter = two_i // 2
    if h1 != h or two_i % 2 or tuple(w2.shape) != (e, h, inter):
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}"
        )
    use_fp8 = w13.dtype == FP8_DTYPE
    if use_fp8:
        if w2.dtype != FP8_DTYPE or w13_scale is None or w2_scale is None:
            raise ValueError("FP8 MoE needs e4m3 w13 and w2 and both scale tensors")
        if h % BLOCK_K or inter % BLOCK_K:
            raise ValueError(f"FP8 MoE needs H ({h}) and I ({inter}) multiples of 128")
        if tuple(w13_scale.shape) != (e, two_i // 128, h // 128) or tuple(w2_scale.shape) != (
            e, h // 128, inter // 128,
        ):
            raise ValueError(
                f"scale shapes {tuple(w13_scale.shape)}, {tuple(w2_scale.shape)} do not match "
                f"128x128 blocks of w13 {tuple(w13.shape)} / w2 {tuple(w2.shape)}"
            )
        if w13_scale.dtype != torch.float32 or w2_scale.dtype != torch.float32:
            raise TypeError("weight scales must be float32")
    elif w13.dtype != torch.bfloat16 or w2.dtype != torch.bfloat16:
        raise TypeError(f"weights must be e4m3 or bf16, got {w13.dtype}/{w2.dtype}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != t or topk_weights.shape != topk_ids.shape:
        raise ValueError("topk_ids and topk_weights must both be [T, k]")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError("topk_ids must be int32 or int64")
    if not (w13.is_contiguous() and w2.is_contiguous()):
        raise ValueError("expert weights must be contiguous")
    return use_fp8, e, inter, h


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor | None,
    w2: torch.Tensor,
    w2_scale: torch.Tensor | None,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    config: MoeConfig | None = None,
) -> torch.Tensor:
    """Routed-expert MoE: ``sum_j w[t,j] * W2[e_j] (silu(W1[e_j] x_t) * W3[e_j] x_t)``.

    FP8 variant when ``w13`` is e4m3 (block scales required), bf16 variant when bf16
    (scales ``None``). See the module docstring for layouts. Returns bf16 ``[T, H]``.
    Falls back to :func:`fused_moe_torch` when Triton cannot run on ``x``'s device.
    """
    use_fp8, num_experts, inter, h = _check_moe_args(
        x, w13, w13_scale, w2, w2_scale, topk_ids, topk_weights
    )
    if not triton_available_for(x):
        return fused_moe_torch(x, w13, w13_scale, w2, w2_scale, topk_ids, topk_weights)
    t, top_k = topk_ids.shape
    if t == 0:
        return torch.empty_like(x)
    cfg = config or default_moe_config(t, top_k, num_experts, use_fp8)
    if cfg.block_m < 16:
        raise ValueError("block_m must be >= 16 (tl.dot minimum)")
    s = t * top_k
    sorted_ids, tile_expert, num_post = moe_align(topk_ids, num_experts, cfg.block_m)
    max_tiles = tile_expert.shape[0]
    p = sorted_ids.shape[0]
    fp32_dot = interpret_mode()

    if use_fp8:
        assert w13_scale is not None and w2_scale is not None  # checked above
        a1, a1_s = per_token_group_quant_fp8(x)
        s1 = (a1_s.stride(0), a1_s.stride(1))
        bs1, bs1_strides = w13_scale, (w13_scale.stride(0), w13_scale.stride(1))
    else:
        a1, a1_s, s1 = x.contiguous(), x, (0, 0)
        bs1, bs1_strides = x, (0, 0)
    w1 = cfg.num_warps1 or cfg.num_warps
    if use_fp8 and cfg.unfused_gate_up:
        assert w2_scale is not None
        gu = torch.empty(p, 2 * inter, dtype=torch.bfloat16, device=x.device)
        _moe_grouped_gemm_kernel[(max_tiles * triton.cdiv(2 * inter, cfg.block_n1),)](
            a1, a1_s, w13, bs1, gu, x,
            sorted_ids, tile_expert, num_post,
            2 * inter, h, s,
            a1.stride(0), s1[0], s1[1],
            w13.stride(0), w13.stride(1), bs1_strides[0], bs1_strides[1],
            gu.stride(0),
            top_k, max_tiles,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n1, BLOCK_K=BLOCK_K,
            USE_FP8=True, FP32_DOT=fp32_dot, GROUP_M=cfg.group_m, GATHER_A=True, SCATTER_C=False,
            num_warps=w1, num_stages=cfg.num_stages,
        )
        a2 = torch.empty(p, inter, dtype=FP8_DTYPE, device=x.device)
        a2_s = torch.empty(p, inter // BLOCK_K, dtype=torch.float32, device=x.device)
        _silu_mul_quant_kernel[(triton.cdiv(p, 8), inter // BLOCK_K)](
            gu, a2, a2_s, p, inter, gu.stride(0), a2.stride(0), a2_s.stride(0),
            GROUP=BLOCK_K, BLOCK_M=8, FP8_MAX_C=FP8_MAX, EPS=1e-10, num_warps=4,
        )
        s2 = (a2_s.stride(0), a2_s.stride(1))
        bs2, bs2_strides = w2_scale, (w2_scale.stride(0), w2_scale.stride(1))
    else:
        hmid = torch.empty(p, inter, dtype=torch.bfloat16, device=x.device)
        grid1 = (max_tiles * triton.cdiv(inter, cfg.block_n1),)
        _moe_gemm1_kernel[grid1](
            a1, a1_s, w13, bs1, hmid,
            sorted_ids, tile_expert, num_post,
            inter, h, s, top_k,
            a1.stride(0), s1[0], s1[1],
            w13.stride(0), w13.stride(1), bs1_strides[0], bs1_strides[1],
            hmid.stride(0), max_tiles,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n1, BLOCK_K=BLOCK_K,
            USE_FP8=use_fp8, FP32_DOT=fp32_dot, GROUP_M=cfg.group_m,
            num_warps=w1, num_stages=cfg.num_stages,
        )
        if use_fp8:
            assert w2_scale is not None
            a2, a2_s = per_token_group_quant_fp8(hmid)
            s2 = (a2_s.stride(0), a2_s.stride(1))
            bs2, bs2_strides = w2_scale, (w2_scale.stride(0), w2_scale.stride(1))
        else:
            a2, a2_s, s2 = hmid, hmid, (0, 0)
            bs2, bs2_strides = hmid, (0, 0)
    out_slots = torch.empty(s, h, dtype=torch.bfloat16, device=x.device)
    weights = topk_weights.reshape(-1).contiguous()
    grid2 = (max_tiles * triton.cdiv(h, cfg.block_n2),)
    _moe_grouped_gemm_kernel[grid2](
        a2, a2_s, w2, bs2, out_slots, weights,
        sorted_ids, tile_expert, num_post,
        h, inter, s,
        a2.stride(0), s2[0], s2[1],
        w2.stride(0), w2.stride(1), bs2_strides[0], bs2_strides[1],
        out_slots.stride(0),
        top_k, max_tiles,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n2, BLOCK_K=BLOCK_K,
        USE_FP8=use_fp8, FP32_DOT=fp32_dot, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if top_k == 1:
        return out_slots.view(t, h)
    out = torch.empty(t, h, dtype=x.dtype, device=x.device)
    _moe_combine_kernel[(t, triton.cdiv(h, 1024))](out_slots, out, h, TOPK=top_k, BLOCK_H=1024)
    return out
