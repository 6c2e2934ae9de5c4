"""Block-wise FP8 (e4m3) weight quantization of DeepSeek-V3 §3.3.2: each 128x128 tile of a weight
[out, in] shares one float32 scale; checkpoints store ``weight_scale_inv`` [ceil(out/128),
ceil(in/128)] = the multiplier that turns the fp8 tile back into real values."""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value


def scale_shape(weight_shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, int]:
    """Shape of ``weight_scale_inv`` for a 2-D weight (partial edge tiles get their own scale)."""
    out_f, in_f = weight_shape
    return (-(-out_f // block[0]), -(-in_f // block[1]))


def _expand(scale_inv: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    # [so, si] -> [so*b0, si*b1] -> cropped to the weight's [out, in]
    full = scale_inv.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)
    return full[: shape[0], : shape[1]]


def dequantize_blockwise(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128),
                         dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """fp8 [out, in] · per-tile scale_inv -> ``dtype`` [out, in] (computed in float32)."""
    shape = (weight.shape[0], weight.shape[1])
    return (weight.float() * _expand(scale_inv.float(), shape, block)).to(dtype)


def quantize_blockwise(weight: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """float [out, in] -> (fp8 e4m3 [out, in], float32 scale_inv [ceil(out/b0), ceil(in/b1)]),
    each tile scaled so its absmax maps to the largest e4m3 value."""
    out_f, in_f = weight.shape
    so, si = scale_shape((out_f, in_f), block)
    padded = torch.zeros(so * block[0], si * block[1], dtype=torch.float32, device=weight.device)
    padded[:out_f, :in_f] = weight.float()
    tiles = padded.view(so, block[0], si, block[1])  # [so, b0, si, b1]
    amax = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12)  # [so, si]
    scale_inv = amax / FP8_MAX
    q = (tiles / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(so * block[0], si * block[1])[:out_f, :in_f].contiguous(), scale_inv.float()
