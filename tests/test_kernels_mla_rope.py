"""float64 reference tests for kernels.mla_rope (Triton interpreter): the fused q rotation and
latent-cache write must equal the step-by-step definition, for both rotary layouts."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede any triton import

import pytest
import torch

triton = pytest.importorskip("triton")

from dseval.kernels.mla_rope import mla_rope_and_cache, mla_rope_and_cache_torch


def _rotate64(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate x [T, ..., d] (float64) by angle pos·inv_freq, pair by pair."""
    ang = pos.double()[:, None] * inv_freq.double()[None, :]  # [T, d/2]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (ang.shape[1],)
    c, s = ang.cos().view(shape), ang.sin().view(shape)
    out = x.clone()
    if interleave:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
    else:
        h = x.shape[-1] // 2
        a, b = x[..., :h], x[..., h:]
        out[..., :h], out[..., h:] = a * c - b * s, b * c + a * s
    return out


@pytest.mark.parametrize(("interleave", "H"), [(True, 3), (False, 3), (True, 40), (False, 40)])
def test_mla_rope_and_cache_matches_float64(interleave: bool, H: int) -> None:
    """H=40: two blocks of heads, the second partly masked."""
    g = torch.Generator().manual_seed(int(interleave) + H)
    T, nope, rope, rank, bs, blocks = 5, 16, 8, 24, 4, 6
    q = torch.randn(T, H, nope + rope, generator=g).bfloat16()
    kv = (torch.randn(T, rank + rope, generator=g) * 3).bfloat16()
    w = (1 + 0.1 * torch.randn(rank, generator=g)).bfloat16()
    pos = torch.tensor([0, 7, 3, 40, 12])
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rope, 2).double() / rope))
    table = torch.arange(64).double()[:, None] * inv_freq[None, :]
    cos, sin = table.cos().float(), table.sin().float()
    slots = torch.tensor([5, 0, 17, 23, 9])
    cache = torch.full((blocks, bs, rank + rope), 7.0).bfloat16()
    q_pe = mla_rope_and_cache(q, kv, pos, cos, sin, w, 1e-6, cache, slots, interleave)
    assert q_pe.shape == (T, H, rope) and q_pe.is_contiguous() and q_pe.dtype == torch.bfloat16
    tol = {"rtol": 1.6e-2, "atol": 1e-2}  # bf16 stores (interpreter truncates: ~1 ulp)
    torch.testing.assert_close(q_pe.double(), _rotate64(q[..., nope:].double(), pos, inv_freq, interleave), **tol)
    rows = cache.view(-1, rank + rope)
    c = kv[:, :rank].double()
    normed = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    torch.testing.assert_close(rows[slots, :rank].double(), normed, **tol)
    torch.testing.assert_close(rows[slots, rank:].double(), _rotate64(kv[:, rank:].double(), pos, inv_freq, interleave),
                               **tol)
    untouched = torch.ones(rows.shape[0], dtype=torch.bool)
    untouched[slots] = False
    assert rows[untouched].eq(7.0).all()  # only the slots named are written
    # the torch fallback has the same contract
    cache2 = torch.full_like(cache, 7.0)
    q_pe2 = mla_rope_and_cache_torch(q, kv, pos, cos, sin, w, 1e-6, cache2, slots, interleave)
    torch.testing.assert_close(q_pe2.double(), q_pe.double(), **tol)
    torch.testing.assert_close(cache2.double(), cache.double(), **tol)


def test_mla_rope_and_cache_rejects_mismatched_cache() -> None:
    q, kv = torch.zeros(1, 2, 24).bfloat16(), torch.zeros(1, 32).bfloat16()
    cos = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="cache rows"):
        mla_rope_and_cache(q, kv, torch.zeros(1, dtype=torch.long), cos, cos, torch.ones(24), 1e-6,
                           torch.zeros(2, 4, 30).bfloat16(), torch.zeros(1, dtype=torch.long), True)
