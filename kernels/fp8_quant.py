"""Per-token-group FP8 (e4m3) activation quantization, DeepSeek-V3 style.

DeepSeek-V3 checkpoints store linear weights as e4m3 with one fp32 scale per 128x128
block and expect activations quantized per token in groups of 128 channels ("1x128"),
each group with its own fp32 scale ``s = amax(|x_group|) / 448``, so ``x ~= q * s``.

This module provides that activation quantizer as one Triton kernel (one program per
row-chunk x group; bandwidth-bound: reads 2 B/elem, writes 1 B/elem + 4 B/128 elem)
and a pure-torch reference used on CPU and in tests.

The scale tensor can be produced in either layout:

* row-major ``[M, K/128]`` (stride ``(K/128, 1)``): what the Triton GEMMs read;
* column-major ``[M, K/128]`` (stride ``(1, M_pad)``): what ``torch._scaled_mm``
  requires for its 1x128 block-scaled left operand.

``pad_rows_to`` lets the caller get an output whose row count is rounded up (extra rows
are zeros with scale 1): ``torch._scaled_mm``'s block-scaled path rejects M that is not a
multiple of 4, and padding at quantization time costs nothing extra.

Helpers shared by the other kernel files (interpreter detection, fp8 constants) live
here too, because this is the lowest-level module of the package.
"""

from __future__ import annotations

import math
import os

import torch

try:  # Triton is optional: CPU-only installs use the torch paths.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # noqa: BLE001  # pragma: no cover - Triton may fail to import in odd ways
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    HAS_TRITON = False

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "GROUP_SIZE",
    "HAS_TRITON",
    "dequant_block_fp8_weight",
    "interpret_mode",
    "patch_triton_interpreter",
    "per_token_group_quant_fp8",
    "per_token_group_quant_fp8_torch",
    "triton_available_for",
]

FP8_DTYPE: torch.dtype = torch.float8_e4m3fn
FP8_MAX: float = float(torch.finfo(torch.float8_e4m3fn).max)  # 448.0
GROUP_SIZE: int = 128
# Floor for amax so an all-zero group gets a tiny positive scale instead of 0 (0/0 = NaN).
_AMAX_EPS: float = 1e-10


def interpret_mode() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``).

    Kernels use this to pick fp32 compute for ``tl.dot``: the interpreter computes bf16
    arithmetic and bf16 dots incorrectly, while on the GPU we want bf16/fp8 tensor cores.
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def patch_triton_interpreter() -> None:
    """Fix two Triton 3.6 interpreter defects that would make CPU tests meaningless.

    1. numpy >= 2.4: the interpreter stores scalars as 1-element arrays and converts them
       with ``int(arr)``, which numpy 2.4 removed, so ``for i in range(n)`` with a runtime
       ``n`` raises ``TypeError: only 0-dimensional arrays ...``. We index the element.
    2. fp32 -> e4m3 with round-to-nearest-even drops the mantissa carry (e.g. -127.9
       becomes -64 instead of -128), and fp32 -> bf16 truncates. We route both casts
       through torch's RNE casts, which match the GPU's ``cvt.rn(.satfinite)`` for the
       in-range values our kernels produce (they clamp to +-448 before e4m3).

    Idempotent; a no-op unless ``TRITON_INTERPRET=1``. Never affects GPU execution.
    """
    if not (HAS_TRITON and interpret_mode()):
        return
    try:
        import numpy as np
        from triton.runtime import interpreter as _interp
    except Exception:  # noqa: BLE001  # pragma: no cover - internal module moved
        return
    orig = getattr(_interp, "_patch_lang_tensor", None)
    if orig is not None and not getattr(orig, "_dseval_fix", False):

        def _patched(tensor: object, scope: object) -> None:
            orig(tensor, scope)
            scope.set_attr(  # type: ignore[attr-defined]
                tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0])
            )

        _patched._dseval_fix = True  # type: ignore[attr-defined]
        _interp._patch_lang_tensor = _patched

    conv = getattr(_interp, "_convert_float", None)
    if conv is not None and not getattr(conv, "_dseval_fix", False):

        def _convert(inp, input_dtype, output_dtype, rounding_mode):  # type: ignore[no-untyped-def]
            rtz = rounding_mode is not None and "RTZ" in str(rounding_mode).upper()
            if input_dtype == tl.float32 and not rtz:
                target = {tl.float8e4nv: (FP8_DTYPE, torch.uint8),
                          tl.bfloat16: (torch.bfloat16, torch.int16)}.get(output_dtype)
                if target is not None:
                    t = torch.from_numpy(np.ascontiguousarray(inp).view(np.float32).copy())
                    out = t.to(target[0]).view(target[1]).numpy()
                    return out.view(np.uint8 if target[1] == torch.uint8 else np.uint16)
            return conv(inp, input_dtype, output_dtype, rounding_mode)

        _convert._dseval_fix = True  # type: ignore[attr-defined]
        _interp._convert_float = _convert


def triton_available_for(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on ``t``: on CUDA, or any device in interpreter mode."""
    if not HAS_TRITON:
        return False
    return t.is_cuda or (interpret_mode() and t.device.type == "cpu")


patch_triton_interpreter()


def per_token_group_quant_fp8_torch(
    x: torch.Tensor, group_size: int = GROUP_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference quantizer in torch: returns ``(q e4m3 [M,K], scale fp32 [M, K/group])``.

    Works on any device; computes in fp32; ``q * scale`` reconstructs ``x``.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    m, k = x.shape
    if k % group_size != 0:
        raise ValueError(f"K={k} must be a multiple of group_size={group_size}")
    xg = x.float().view(m, k // group_size, group_size)
    amax = xg.abs().amax(dim=-1).clamp_min(_AMAX_EPS)
    scale = amax / FP8_MAX
    q = (xg / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(m, k), scale


def dequant_block_fp8_weight(
    weight: torch.Tensor, weight_scale_inv: torch.Tensor, block: int = 128
) -> torch.Tensor:
    """Dequantize a 128x128-block-scaled e4m3 weight ``[N, K]`` to fp32 (any device).

    ``weight_scale_inv`` is ``[ceil(N/128), ceil(K/128)]`` as stored in DeepSeek
    checkpoints (the name says "inv" but it is the multiplier: ``w = q * s``).
    """
    n, k = weight.shape[-2:]
    nb, kb = math.ceil(n / block), math.ceil(k / block)
    if tuple(weight_scale_inv.shape[-2:]) != (nb, kb):
        raise ValueError(
            f"weight_scale_inv shape {tuple(weight_scale_inv.shape)} does not match "
            f"ceil(N/{block}) x ceil(K/{block}) = ({nb}, {kb}) for weight {tuple(weight.shape)}"
        )
    s = weight_scale_inv.float()
    s = s.repeat_interleave(block, dim=-2)[..., :n, :]
    s = s.repeat_interleave(block, dim=-1)[..., :, :k]
    return weight.float() * s


if HAS_TRITON:

    # M, M_PAD and the column-major scales' stride follow each step's row count and only bound
    # masks: not specialized, so one compiled variant serves every step.
    @triton.jit(do_not_specialize=["M", "M_PAD", "stride_sg"])
    def _per_token_group_quant_kernel(
        x_ptr,
        q_ptr,
        s_ptr,
        M,
        M_PAD,
        stride_xm,
        stride_qm,
        stride_sm,
        stride_sg,
        GROUP: tl.constexpr,
        BLOCK_M: tl.constexpr,
        FP8_MAX_C: tl.constexpr,
        EPS: tl.constexpr,
    ):
        # One program quantizes BLOCK_M rows of one 128-wide channel group. Rows >= M
        # (padding rows requested by the caller) are written as zeros with scale 1.
        pid_m = tl.program_id(0)
        g = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = g * GROUP + tl.arange(0, GROUP)
        valid = rows < M
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=valid[:, None], other=0.0
        ).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(x), axis=1), EPS)
        scale = amax / FP8_MAX_C
        scale = tl.where(valid, scale, 1.0)
        q = tl.clamp(x / scale[:, None], -FP8_MAX_C, FP8_MAX_C)
        in_out = rows < M_PAD
        tl.store(
            q_ptr + rows[:, None] * stride_qm + cols[None, :],
            q.to(q_ptr.dtype.element_ty),
            mask=in_out[:, None],
        )
        tl.store(s_ptr + rows * stride_sm + g * stride_sg, scale, mask=in_out)


def per_token_group_quant_fp8(
    x: torch.Tensor,
    group_size: int = GROUP_SIZE,
    column_major_scales: bool = False,
    pad_rows_to: int = 1,
    block_m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations to e4m3 with one fp32 scale per (row, 128-channel group).

    Args:
        x: ``[M, K]`` bf16/fp16/fp32, last dim contiguous, ``K % group_size == 0``.
        group_size: channels per scale; DeepSeek-V3 uses 128 (the Triton kernel needs a
            power of two).
        column_major_scales: if True the scale tensor has strides ``(1, M_pad)`` (the
            layout ``torch._scaled_mm`` wants for 1x128 scales), else ``(K/group, 1)``.
        pad_rows_to: round the output row count up to a multiple of this; padding rows are
            zero with scale 1 (used to satisfy ``torch._scaled_mm``'s ``M % 4 == 0``).
        block_m: rows per program (optional explicit config, e.g. for interpreter tests).

    Returns:
        ``(q, scale)``: ``q`` e4m3 ``[M_pad, K]`` contiguous; ``scale`` fp32
        ``[M_pad, K/group]`` in the requested layout, such that ``q * scale ~= x``.

    Falls back to the torch reference when Triton cannot run on ``x``'s device.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"x must be bf16/fp16/fp32, got {x.dtype}")
    m, k = x.shape
    if k % group_size != 0:
        raise ValueError(f"K={k} must be a multiple of group_size={group_size}")
    if pad_rows_to < 1:
        raise ValueError("pad_rows_to must be >= 1")
    if x.stride(-1) != 1:
        x = x.contiguous()
    m_pad = ((m + pad_rows_to - 1) // pad_rows_to) * pad_rows_to
    groups = k // group_size

    if not triton_available_for(x) or (group_size & (group_size - 1)) != 0:
        q, s = per_token_group_quant_fp8_torch(x, group_size)
        if m_pad != m:
            q = torch.cat([q, torch.zeros(m_pad - m, k, dtype=q.dtype, device=q.device)])
            s = torch.cat([s, torch.ones(m_pad - m, groups, dtype=s.dtype, device=s.device)])
        if column_major_scales:
            s = s.t().contiguous().t()
        return q, s

    q = torch.empty(m_pad, k, dtype=FP8_DTYPE, device=x.device)
    if column_major_scales:
        s = torch.empty(groups, m_pad, dtype=torch.float32, device=x.device).t()
    else:
        s = torch.empty(m_pad, groups, dtype=torch.float32, device=x.device)
    if m_pad == 0:
        return q, s
    bm = block_m if block_m is not None else (8 if m_pad >= 8 else 1)
    grid = (triton.cdiv(m_pad, bm), groups)
    _per_token_group_quant_kernel[grid](
        x, q, s, m, m_pad, x.stride(0), q.stride(0), s.stride(0), s.stride(1),
        GROUP=group_size, BLOCK_M=bm, FP8_MAX_C=FP8_MAX, EPS=_AMAX_EPS,
        num_warps=4 if bm >= 8 else 1,
    )
    return q, s
