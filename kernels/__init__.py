"""dseval.kernels: Triton kernels for DeepSeek-V3-class inference (H100/H200 first).

Stable API (the engine calls these; keep signatures backward compatible):

FP8 activation quantization (``fp8_quant``)
    per_token_group_quant_fp8(x, group_size=128, column_major_scales=False, pad_rows_to=1)
        -> (q e4m3 [M_pad, K], scale fp32 [M_pad, K/128])
    per_token_group_quant_fp8_torch(x) -> same, pure torch reference
    dequant_block_fp8_weight(weight e4m3 [N, K], weight_scale_inv fp32 [ceil(N/128), ceil(K/128)])
        -> fp32 [N, K]

Block-FP8 linear (``fp8_gemm``)
    fp8_linear(x bf16 [..., K], weight e4m3 [N, K], weight_scale_inv fp32
               [ceil(N/128), ceil(K/128)], bias=None, backend="auto") -> bf16 [..., N]
        auto: CUDA & M <= SKINNY_M_MAX (64) -> Triton W8A16 split-K (decode), except
              M >= 16 with a >= 32 MB weight -> cuBLAS; larger M & scaled_mm_is_safe
              (K % 512 == 0, N % 128 == 0) -> torch._scaled_mm block-scaled, M padded to 4;
              else Triton W8A8; CPU -> torch dequantize fallback.
    fp8_gemm_w8a16_skinny, fp8_gemm_w8a8, fp8_gemm_scaled_mm, scaled_mm_is_safe (lower level)

Fused MoE (``moe``)
    fused_moe(x bf16 [T, H], w13 [E, 2I, H], w13_scale [E, 2I/128, H/128] | None,
              w2 [E, H, I], w2_scale [E, H/128, I/128] | None,
              topk_ids int [T, k], topk_weights [T, k], config=None) -> bf16 [T, H]
        e4m3 weights + scales -> block-FP8 grouped GEMMs; bf16 weights + None -> bf16.
        w13 rows are [gate; up]; output = sum_j w_j * W2 (silu(gate) * up). No host sync.
    moe_align(topk_ids, num_experts, block_m) -> (sorted_ids, tile_expert, num_post_padded)

MLA decode (``mla_decode``)
    mla_decode(q_nope_absorbed bf16 [B, H, 512], q_pe bf16 [B, H, 64],
               kv_cache bf16 [num_blocks, block_size, 576], block_tables int [B, max_blocks],
               context_lens int [B], sm_scale, max_context_len=None, config=None)
        -> bf16 [B, H, 512]  (latent space; the caller applies W_UV)
        Splits come from block_tables' static capacity (or max_context_len): pass
        max_context_len when block_tables is sized far beyond the live contexts.
    default_mla_config(B, H) -> MlaDecodeConfig (H200-tuned)

MLA prefill (``mla_prefill``)
    mla_prefill_attention(q_nope [t, H, nope], q_pe [t, H, rope], k_nope [S, H, nope],
                          k_pe [S, rope], v [S, H, v], sm_scale) -> [t, H, v]
        causal attention of a sequence's last t positions over its S context rows; CUDA ->
        torch SDPA (flash/cuDNN, no [H, t, S] scores), else the float32 reference;
        set_prefill_backend("fp8") -> the FP8 kernel below (CUDA only).
    mla_prefill_fp8.mla_prefill_attention_fp8(same args, config=None) -> bf16 [t, H, v]
        one Triton flash kernel with e4m3 dots (per-head K, per-(token, head) Q, per-channel V
        scales); opt-in: it changes numerics (~5% relative on random inputs).

MLA rotary + latent cache (``mla_rope``)
    mla_rope_and_cache(q [T, H, nope+rope], kv [T, kv_rank+rope], positions [T], cos, sin
                       [max_pos, rope/2] fp32, norm_weight [kv_rank], eps, cache [nb, bs, kv_rank+rope],
                       slot_mapping [T], interleave) -> q_pe rotated [T, H, rope]
        one launch: q_pe rotation per head, kv_a_layernorm + k_pe rotation into the cache rows.

Routing (``router``)
    group_topk(logits fp32 [T, E], bias [E] | None, top_k, n_group, topk_group, sigmoid,
               group_top2, normalize, scaling) -> (weights fp32 [T, k], ids int64 [T, k])
        DeepSeek-V3 group-limited top-k in one launch; group_topk_supported(E, n_group, k).

RMSNorm (``norm``)
    rms_norm(x [..., H], weight [H], eps=1e-6, residual=None)
        -> y, or (y, x + residual) when residual is given (residual not modified)

Every op has a ``*_torch`` reference that also serves as the CPU fallback; the Triton
paths run on CUDA or under ``TRITON_INTERPRET=1`` on CPU tensors (tests). Triton is
optional at import time (``HAS_TRITON``). All GPU paths are free of host syncs and were
captured and replayed in CUDA graphs by bench/kernels.py. Under ``TRITON_INTERPRET=1``
importing this package patches two Triton 3.6 interpreter defects (numpy-2.4 scalar
conversion; fp32->e4m3/bf16 rounding), see ``fp8_quant.patch_triton_interpreter``.
"""

from __future__ import annotations

from . import fp8_gemm, fp8_quant, mla_rope, moe, norm, router
from . import mla_decode as _mla_mod
from .fp8_gemm import (
    SKINNY_M_MAX,
    GemmConfig,
    SkinnyConfig,
    fp8_gemm_scaled_mm,
    fp8_gemm_w8a8,
    fp8_gemm_w8a16_skinny,
    fp8_linear,
    fp8_linear_torch,
    scaled_mm_is_safe,
)
from .fp8_quant import (
    FP8_DTYPE,
    FP8_MAX,
    HAS_TRITON,
    dequant_block_fp8_weight,
    per_token_group_quant_fp8,
    per_token_group_quant_fp8_torch,
)
from .mla_decode import (
    MlaDecodeConfig,
    default_mla_config,
    mla_decode,
    mla_decode_torch,
)
from .mla_prefill import mla_prefill_attention, mla_prefill_attention_torch
from .mla_rope import mla_rope_and_cache, mla_rope_and_cache_torch
from .moe import MoeConfig, fused_moe, fused_moe_torch, moe_align
from .norm import rms_norm, rms_norm_torch
from .router import group_topk, group_topk_supported

mla_decode_module = _mla_mod

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "HAS_TRITON",
    "SKINNY_M_MAX",
    "GemmConfig",
    "MlaDecodeConfig",
    "MoeConfig",
    "SkinnyConfig",
    "default_mla_config",
    "dequant_block_fp8_weight",
    "fp8_gemm",
    "fp8_gemm_scaled_mm",
    "fp8_gemm_w8a8",
    "fp8_gemm_w8a16_skinny",
    "fp8_linear",
    "fp8_linear_torch",
    "fp8_quant",
    "fused_moe",
    "fused_moe_torch",
    "group_topk",
    "group_topk_supported",
    "mla_decode",
    "mla_decode_torch",
    "mla_prefill_attention",
    "mla_prefill_attention_torch",
    "mla_rope",
    "mla_rope_and_cache",
    "mla_rope_and_cache_torch",
    "moe",
    "moe_align",
    "norm",
    "per_token_group_quant_fp8",
    "per_token_group_quant_fp8_torch",
    "rms_norm",
    "rms_norm_torch",
    "router",
    "scaled_mm_is_safe",
]
