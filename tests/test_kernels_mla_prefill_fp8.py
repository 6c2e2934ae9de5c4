"""float64 reference tests for kernels.mla_prefill_fp8 (Triton interpreter, small sizes).

Two references. The exact attention (float64): e4m3 keeps 3 mantissa bits (up to 6.25% per
element), and rounding q and k moves every score, so on random inputs FP8 attention is ~5% off
whatever the context length; the kernel is held to 8% there. And a float64 emulation of the
documented quantization (the same scales and e4m3 roundings, probabilities rounded against the
row's final maximum where the kernel uses its running one): the kernel must match that to 3%
overall and 6% on every (head, channel). Each case is built so that a wrong scaling choice
costs tens of percent against both.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede any triton import

import pytest
import torch

triton = pytest.importorskip("triton")

from dseval.kernels.mla_prefill import mla_prefill_attention_torch
from dseval.kernels.mla_prefill_fp8 import P_SHIFT, Fp8AttentionConfig, mla_prefill_attention_fp8

NOPE, ROPE, VD = 32, 16, 32  # V3 is 128 / 64 / 128; small powers of two keep the interpreter fast
SMALL = Fp8AttentionConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)


def _inputs(t: int, s: int, h: int, gen: torch.Generator, k_scale: float = 1.0, pe_scale: float = 1.0,
            v_spread: float = 1.0) -> tuple[torch.Tensor, ...]:
    """bf16 attention inputs; per-head key magnitudes span ``k_scale`` (queries the inverse, so
    scores keep their size), the rotary key is ``pe_scale`` times the others (its query the
    inverse), v's channels span ``v_spread`` in magnitude."""
    head_mag = k_scale ** torch.linspace(0, 1, h)[None, :, None]
    chan_mag = v_spread ** torch.linspace(-1, 0, VD)
    qn = torch.randn(t, h, NOPE, generator=gen) / head_mag
    qp = torch.randn(t, h, ROPE, generator=gen) / pe_scale
    kn = torch.randn(s, h, NOPE, generator=gen) * head_mag
    kp = torch.randn(s, ROPE, generator=gen) * pe_scale
    v = torch.randn(s, h, VD, generator=gen) * chan_mag
    return tuple(x.bfloat16() for x in (qn, qp, kn, kp, v))


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float8_e4m3fn).double()


def _emulate(qn, qp, kn, kp, v, scale: float) -> torch.Tensor:  # noqa: ANN001 (bf16 tensors)
    """The module docstring's quantization in float64: per-head key scales, the rotary scale
    folded into q_pe, per-(token, head) query scales, per-(head, channel) value scales,
    probabilities times 2^P_SHIFT in e4m3."""
    qn, qp, kn, kp, v = (x.double() for x in (qn, qp, kn, kp, v))
    sk, skp, sv = (a.clamp_min(1e-12) / 448 for a in (kn.abs().amax(dim=(0, 2)), kp.abs().amax(), v.abs().amax(0)))
    qp = qp * (skp / sk)[None, :, None]
    sq = torch.maximum(qn.abs().amax(-1), qp.abs().amax(-1)).clamp_min(1e-12) / 448  # [t, H]
    scores = torch.einsum("thd,shd->hts", _e4m3(qn / sq[..., None]), _e4m3(kn / sk[None, :, None]))
    scores = scores + torch.einsum("thr,sr->hts", _e4m3(qp / sq[..., None]), _e4m3(kp / skp))
    scores = scores * (sq.t() * sk[:, None])[..., None] * scale
    t, s = qn.shape[0], kn.shape[0]
    scores = scores.masked_fill(torch.arange(s)[None, :] > torch.arange(s - t, s)[:, None], float("-inf"))
    p = scores.softmax(-1)
    top = p.amax(-1, keepdim=True)
    p = _e4m3(p / top * 2**P_SHIFT) * top / 2**P_SHIFT
    return torch.einsum("hts,shv->thv", p, _e4m3(v / sv[None])) * sv[None]


def _check(args: tuple[torch.Tensor, ...], scale: float) -> None:
    out = mla_prefill_attention_fp8(*args, scale, config=SMALL)
    assert out.shape == args[0].shape[:2] + (VD,) and out.dtype == torch.bfloat16
    exact = mla_prefill_attention_torch(*(x.double() for x in args), scale)
    assert ((out.double() - exact).norm() / exact.norm()).item() < 0.08
    emu = _emulate(*args, scale)
    err = out.double() - emu
    assert (err.norm() / emu.norm()).item() < 0.03
    assert (err.norm(dim=0) / emu.norm(dim=0)).max().item() < 0.06


@pytest.mark.parametrize(
    "t,s,h",
    [
        (40, 40, 3),  # first chunk: square causal, t not a multiple of the tile
        (24, 100, 2),  # continued chunk: 76 older keys, boundary inside a tile
        (16, 47, 2),  # offset so that row 0's last key ends a tile (stage 1 only for row 0)
        (5, 200, 1),  # short chunk at the end of a long context
        (64, 1024, 1),  # many keys: stage-1 tiles dominate
    ],
)
def test_fp8_attention_matches_float64(t: int, s: int, h: int) -> None:
    _check(_inputs(t, s, h, torch.Generator().manual_seed(t * 1000 + s)), 0.2)


def test_fp8_attention_scales_per_head_channel_and_rope() -> None:
    """Heads whose keys differ 10^4x in size, a rotary key 30x smaller than the rest and values
    whose channels span 10^5x: one shared scale would flush the small ones (e4m3 spans
    448 down to 2^-9) and an unfolded rotary scale would weigh the rotary scores 30x off."""
    gen = torch.Generator().manual_seed(7)
    _check(_inputs(32, 96, 4, gen, k_scale=1e4, pe_scale=1 / 30, v_spread=1e5), 0.2)


def test_fp8_attention_keeps_small_probabilities() -> None:
    """One key dominates each row and 300 others each carry ~1e-3 of its weight (a third of
    the row's mass together): below e4m3's smallest step (2^-9) without the 2^8 shift."""
    t, s, h = 8, 320, 1
    gen = torch.Generator().manual_seed(11)
    qn = torch.zeros(t, h, NOPE)
    qn[..., 0] = 1.0
    kn = torch.zeros(s, h, NOPE)
    kn[:, :, 0] = -6.9  # exp(-6.9) ~ 1e-3 relative to the needle
    kn[5, :, 0] = 0.0  # the needle
    v = torch.randn(s, h, VD, generator=gen) + 2.0  # every key shifts the output: lost mass shows
    args = tuple(x.bfloat16() for x in (qn, torch.zeros(t, h, ROPE), kn, torch.zeros(s, ROPE), v))
    _check(args, 1.0)


def test_fp8_attention_rejects_odd_head_dims() -> None:
    gen = torch.Generator().manual_seed(0)
    qn, qp, kn, kp, v = _inputs(4, 4, 1, gen)
    with pytest.raises(ValueError, match="v_head_dim=24"):
        mla_prefill_attention_fp8(qn, qp, kn, kp, v[..., :24], 0.2, config=SMALL)
