"""float64 reference tests for kernels.norm (Triton interpreter)."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede any triton import

import pytest
import torch

triton = pytest.importorskip("triton")

from dseval.kernels.norm import rms_norm


def _ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xd = x.double()
    return xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * w.double()


@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 200)])
def test_rms_norm(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=gen) * 2).bfloat16()
    w = torch.randn(shape[-1], generator=gen).bfloat16()
    y = rms_norm(x, w, 1e-6)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    # bf16 output: interpreter truncates on store, allow ~1 ulp (2^-7 relative)
    torch.testing.assert_close(y.double(), _ref(x, w, 1e-6), rtol=1.6e-2, atol=1e-2)


def test_rms_norm_fused_residual() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 96, generator=gen).bfloat16()
    r = torch.randn(4, 96, generator=gen).bfloat16()
    r_before = r.clone()
    w = torch.rand(96, generator=gen).float()
    y, h = rms_norm(x, w, 1e-5, residual=r)
    torch.testing.assert_close(r, r_before)  # not modified in place
    href = x.double() + r.double()
    torch.testing.assert_close(h.double(), href, rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(y.double(), _ref(h, w, 1e-5), rtol=1.6e-2, atol=1e-2)


def test_rms_norm_rejects_bad_weight() -> None:
    with pytest.raises(ValueError):
        rms_norm(torch.randn(2, 8).bfloat16(), torch.ones(7))
