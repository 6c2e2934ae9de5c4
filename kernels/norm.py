"""RMSNorm with optional fused residual add (DeepSeek-V3 pre-norm blocks).

DeepSeek layers do ``h = x + residual; residual = h; y = rmsnorm(h) * weight``. Fusing
the add into the norm saves one full read+write of the hidden state per norm (the op is
purely bandwidth-bound: 2 B/elem in, 2 B/elem out, or 4+4 with the residual).

Dtypes: ``x``/``residual`` bf16 (fp16/fp32 accepted), ``weight`` any float dtype
``[H]``; statistics in fp32; outputs in ``x.dtype``. The sum ``x + residual`` is rounded
to ``x.dtype`` before normalising, matching an unfused bf16 model.
"""

from __future__ import annotations

import torch

from .fp8_quant import HAS_TRITON, triton_available_for

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["rms_norm", "rms_norm_torch"]


def rms_norm_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Torch reference/fallback with the same semantics as :func:`rms_norm`."""
    if residual is not None:
        x = (x.float() + residual.float()).to(x.dtype)
        new_res = x
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    y = y.to(x.dtype)
    return (y, new_res) if residual is not None else y


if HAS_TRITON:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, r_ptr, w_ptr, y_ptr, rout_ptr,
        H, stride_x, stride_r, stride_y, stride_ro,
        eps,
        HAS_RES: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        # One program per row; the whole row (<= BLOCK_H) sits in registers.
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_H)
        mask = cols < H
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
        if HAS_RES:
            r = tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
            tl.store(rout_ptr + row * stride_ro + cols, x, mask=mask)
        xf = x.to(tl.float32)
        var = tl.sum(xf * xf, axis=0) / H
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y + cols, (xf * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim; with ``residual`` returns ``(norm(x + residual), x + residual)``.

    Args:
        x: ``[..., H]`` (last dim contiguous).
        weight: ``[H]``.
        eps: added to the mean square (DeepSeek-V3 uses 1e-6).
        residual: optional, same shape/dtype as ``x``; it is NOT modified in place (a new
            tensor holds the sum, so CUDA-graph-captured callers keep stable inputs).

    Returns:
        ``y`` or ``(y, new_residual)``, both in ``x.dtype``.
    """
    h = x.shape[-1]
    if weight.shape != (h,):
        raise ValueError(f"weight must be [{h}], got {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError("residual must match x in shape and dtype")
    if not triton_available_for(x):
        return rms_norm_torch(x, weight, eps, residual)
    x2 = x.reshape(-1, h)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    y = torch.empty_like(x2)
    if residual is not None:
        r2 = residual.reshape(-1, h)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        rout = torch.empty_like(x2)
    else:
        r2, rout = x2, y
    if rows > 0:
        block = triton.next_power_of_2(h)
        warps = 8 if block >= 4096 else (4 if block >= 1024 else 1)
        _rms_norm_kernel[(rows,)](
            x2, r2, weight, y, rout,
            h, x2.stride(0), r2.stride(0), y.stride(0), rout.stride(0),
            eps,
            HAS_RES=residual is not None, BLOCK_H=block, num_warps=warps,
        )
    y = y.view(x.shape)
    if residual is not None:
        return y, rout.view(x.shape)
    return y
