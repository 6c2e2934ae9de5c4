"""float64 reference tests for kernels.mla_decode (Triton interpreter, small sizes)."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede any triton import

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from dseval.kernels.mla_decode import MlaDecodeConfig, mla_decode, mla_decode_torch


def _ref(qn, qp, cache, bt, lens, scale) -> torch.Tensor:
    b, h, lat = qn.shape
    bs = cache.shape[1]
    out = torch.zeros(b, h, lat, dtype=torch.float64)
    for i in range(b):
        n = int(lens[i])
        if n == 0:
            continue
        rows = torch.cat([cache[int(bt[i, j])] for j in range(math.ceil(n / bs))])[:n].double()
        s = (qn[i].double() @ rows[:, :lat].t() + qp[i].double() @ rows[:, lat:].t()) * scale
        out[i] = torch.softmax(s, -1) @ rows[:, :lat]
    return out


def _case(b: int, h: int, lat: int, rope: int, bs: int, lens: list[int], gen: torch.Generator):
    max_blocks = max(math.ceil(max(lens) / bs), 1) + 1
    nblocks = b * max_blocks + 3
    cache = torch.randn(nblocks, bs, lat + rope, generator=gen).bfloat16()
    perm = torch.randperm(nblocks, generator=gen)[: b * max_blocks].view(b, max_blocks)
    qn = torch.randn(b, h, lat, generator=gen).bfloat16()
    qp = torch.randn(b, h, rope, generator=gen).bfloat16()
    return qn, qp, cache, perm.long(), torch.tensor(lens, dtype=torch.int32)


@pytest.mark.parametrize(
    "b,h,bs,lens,splits,block_h,trans",
    [
        (2, 16, 16, [37, 5], 3, 16, False),  # several splits, partial pages, short sequence
        (3, 20, 8, [0, 50, 17], None, 16, True),  # empty seq, heads % block_h != 0, gather
        (1, 32, 64, [130], 1, 32, True),  # single split, page larger than BLOCK_N
        (2, 16, 16, [40, 33], 2, 16, True),
        (1, 16, 16, [300], 19, 16, True),  # many splits: merge over a 32-wide split tile
        (1, 16, 16, [300], None, 16, True),  # short context, default config: split finer than 256
        (2, 16, 16, [300, 77], 5, 16, False),  # heads-major tiles (the default for <= 16 heads)
    ],
)
def test_mla_decode(
    b: int, h: int, bs: int, lens: list[int], splits: int | None, block_h: int, trans: bool
) -> None:
    gen = torch.Generator().manual_seed(b * 100 + h)
    lat, rope = 64, 16  # V3 is 512 + 64; small powers of two keep the interpreter fast
    qn, qp, cache, bt, cl = _case(b, h, lat, rope, bs, lens, gen)
    scale = 1.0 / math.sqrt(lat + rope)
    cfg = MlaDecodeConfig(block_h=block_h, block_n=16, num_splits=splits, num_warps=4, transposed=trans)
    out = mla_decode(qn, qp, cache, bt, cl, scale, config=cfg)
    ref = _ref(qn, qp, cache, bt, cl, scale)
    assert out.shape == (b, h, lat) and out.dtype == torch.bfloat16
    # p is rounded to bf16 before the PV product on GPU; the interpreter path uses fp32
    torch.testing.assert_close(out.double(), ref, rtol=1.6e-2, atol=2e-3)
    if lens[0] == 0:
        assert (out[0] == 0).all()


def test_default_splits_fill_the_gpu_at_short_contexts() -> None:
    from dseval.kernels.mla_decode import _default_splits

    cpu = torch.device("cpu")  # counts as 132 SMs (an H200)
    assert _default_splits(1, 2, 512, cpu, waves=1) == 8  # short: 64-token splits instead of 2 of 256
    assert _default_splits(32, 2, 512, cpu, waves=1) == 2  # already a full wave: unchanged
    assert _default_splits(1, 1, 320, cpu, waves=2) == 5


def test_default_splits_long_contexts_fill_whole_waves() -> None:
    from dseval.kernels.mla_decode import _default_splits

    cpu = torch.device("cpu")
    assert _default_splits(1, 2, 32768, cpu, waves=1) == 66  # 128 heads: one wave
    assert _default_splits(8, 2, 32768, cpu, waves=1) == 8  # 128 programs; 9 would start a second wave
    assert _default_splits(8, 1, 32768, cpu, waves=2) == 33  # 16 heads: two waves
    assert _default_splits(32, 1, 131072, cpu, waves=2) == 8
    assert _default_splits(1, 1, 32768, cpu, waves=2) == 256  # capped (MAX_SPLITS; 128 tokens each)


@pytest.mark.parametrize("b,h,cap", [(1, 16, 32768), (8, 16, 131072), (8, 128, 32768), (3, 16, 5000), (2, 128, 700)])
def test_split_plan_covers_the_context(b: int, h: int, cap: int) -> None:
    from dseval.kernels.mla_decode import (
        MIN_SPLIT_TOKENS,
        SHORT_CONTEXT,
        _default_splits,
        default_mla_config,
        split_plan,
    )

    cfg = default_mla_config(b, h)
    cpu = torch.device("cpu")
    splits, split_len = split_plan(b, h, cap, cfg, cpu)
    assert splits * split_len >= cap > (splits - 1) * split_len  # every token in exactly one split
    assert split_len % cfg.block_n == 0
    if cap >= SHORT_CONTEXT:
        assert split_len % MIN_SPLIT_TOKENS == 0
        assert splits <= _default_splits(b, -(-h // cfg.block_h), cap, cpu, 2 if cfg.block_h <= 16 else 1)


def test_mla_decode_torch_fallback_matches() -> None:
    gen = torch.Generator().manual_seed(7)
    qn, qp, cache, bt, cl = _case(2, 4, 32, 8, 4, [9, 3], gen)
    out = mla_decode_torch(qn, qp, cache, bt, cl, 0.1)
    torch.testing.assert_close(out.double(), _ref(qn, qp, cache, bt, cl, 0.1), rtol=1.6e-2, atol=2e-3)


def test_mla_decode_shape_errors() -> None:
    gen = torch.Generator().manual_seed(0)
    qn, qp, cache, bt, cl = _case(1, 16, 64, 16, 8, [4], gen)
    with pytest.raises(ValueError):
        mla_decode(qn, qp, cache[..., :70], bt, cl, 0.1)
    with pytest.raises(TypeError):
        mla_decode(qn, qp, cache, bt.float(), cl, 0.1)
