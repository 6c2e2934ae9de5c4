"""RMSNorm (Zhang & Sennrich 2019), used for every norm of DeepSeek-V2/V3 (§2.1 of both papers:
pre-norm blocks, the MLA latent norms ``q_a_layernorm``/``kv_a_layernorm``, MTP's enorm/hnorm)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) · weight, with the statistics taken in float32 so bf16 activations don't lose
    the mean of squares."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype == self.weight.dtype == torch.bfloat16:
            # One fused kernel instead of ~7 elementwise launches (decode is launch-bound; CPU runs,
            # also under the test suite's TRITON_INTERPRET=1, keep the torch path);
            # the weight is applied in fp32 before the one rounding to bf16.
            from dseval.kernels.norm import (
                rms_norm,  # lazy: CPU float32 runs never load Triton
            )

            return rms_norm(x, self.weight, self.eps)  # type: ignore[return-value]
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)
