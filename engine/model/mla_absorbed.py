"""Fused MLA decode: absorbed attention through :func:`dseval.kernels.mla_decode` (DeepSeek-V2 §2.1.2).

Why a separate module: :func:`dseval.engine.model.mla.paged_mla` is the readable reference (a Python
loop over sequences with ``.tolist()`` host syncs), which can neither be captured in a CUDA
graph nor stream a 32K context at bandwidth. When every sequence of a step brings exactly one
new token (plain decode), attention is one ``mla_decode`` call over the paged latent cache:
the query is folded into latent space with W_UK, the kernel attends over ``[c_kv, k_pe]`` rows
through the block tables, and W_UV maps the latent output back to per-head values. The kernel
picks Triton on CUDA and its float32 torch reference elsewhere, so this one path serves both.
Rows with ``context_lens == 0`` (CUDA-graph batch padding) come out as zeros.

The functions take the absorbed weights and the softmax scale, not the attention module, so
this module sits below :mod:`dseval.engine.model.mla`, which calls it.
"""

from __future__ import annotations

import torch

from dseval.engine.model.attention_metadata import AttentionMetadata


def one_query_per_sequence(q_nope: torch.Tensor, meta: AttentionMetadata, kv_cache: torch.Tensor) -> bool:
    """Whether a step can take the fused decode path: on CUDA (CPU runs keep the reference loop,
    whatever TRITON_INTERPRET says), T == B (the scheduler never gives a sequence zero tokens, so
    then each has one) and the cache shares the queries' dtype."""
    return bool(
        q_nope.is_cuda
        and meta.absorbed
        and q_nope.shape[0] == meta.block_tables.shape[0]
        and kv_cache.dtype == q_nope.dtype
    )


def absorbed_decode(q_nope: torch.Tensor, q_pe: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor,
                    scale: float, meta: AttentionMetadata, kv_cache: torch.Tensor) -> torch.Tensor:
    """q_nope [B, H, nope], q_pe [B, H, rope] (rotated), kv_b split per head into w_uk
    [H, nope, C] and w_uv [H, v, C] -> [B, H, v_head_dim]; no host sync."""
    from dseval.kernels.mla_decode import mla_decode  # lazy: keeps Triton out of CPU-only imports

    q_lat = torch.bmm(q_nope.transpose(0, 1), w_uk).transpose(0, 1)  # [H,B,nope]@[H,nope,C] -> [B, H, C]
    o_lat = mla_decode(q_lat, q_pe.contiguous(), kv_cache, meta.block_tables, meta.context_lens, scale)
    return torch.bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)  # [H,B,C]@[H,C,v] -> [B, H, v]

