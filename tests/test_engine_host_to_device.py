"""Checkpoint tensors staged through two buffers arrive byte for byte: small tensors packed into
one buffer, tensors larger than a buffer split over both, every dtype the loader moves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dseval.engine.loading.host_to_device import HostToDevice
from dseval.engine.loading.loader import load_model

from engine_fixtures import v3_style_config, write_random_checkpoint


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(7, generator=g, dtype=torch.float32),                      # a norm: shares a buffer
        torch.randn(300, 257, generator=g).to(torch.float8_e4m3fn),           # larger than a buffer
        torch.randn(0, 5, generator=g),                                        # empty
        torch.randn(33, 31, generator=g, dtype=torch.float64).to(torch.bfloat16),
        torch.randn(64, 128, generator=g).t(),                                 # not contiguous
        torch.tensor(2.5),                                                     # 0-dim
        torch.randint(0, 2**31 - 1, (1000,), generator=g, dtype=torch.int64),
    ]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8).cpu(), b.contiguous().reshape(-1).view(torch.uint8).cpu())


def test_staged_copies_are_exact_across_buffer_turns() -> None:
    stager = HostToDevice(torch.device("cpu"), buffer_bytes=4096, pinned=False)
    sources = _tensors()
    outs = [stager.copy(t) for t in sources]
    stager.finish()
    assert all(_same(o, s) for o, s in zip(outs, sources, strict=True))
    # the sources overflow both buffers, so each was reused; on the host the copies are
    # synchronous, and whether a reused buffer waits for the GPU is the CUDA test's to show
    assert sum(t.numel() * t.element_size() for t in sources) > 2 * 4096


def test_staged_copy_does_not_alias_the_source() -> None:
    stager = HostToDevice(torch.device("cpu"), buffer_bytes=64, pinned=False)
    src = torch.arange(100, dtype=torch.int32)
    out = stager.copy(src)
    src.zero_()
    assert torch.equal(out, torch.arange(100, dtype=torch.int32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned staging needs a CUDA GPU")
def test_gpu_load_through_pinned_buffers_matches_the_host_load(tmp_path: Path) -> None:
    ckpt = write_random_checkpoint(tmp_path, v3_style_config(vocab_size=256), seed=5, fp8=True,
                                   dtype=torch.bfloat16, num_shards=2)
    on_gpu, _, _ = load_model(str(ckpt), "cuda", torch.bfloat16, fp8_weights="keep")
    on_host, _, _ = load_model(str(ckpt), "cpu", torch.bfloat16, fp8_weights="keep")
    gpu_state, host_state = on_gpu.state_dict(), on_host.state_dict()
    assert gpu_state.keys() == host_state.keys()
    for name, t in gpu_state.items():
        assert t.device.type == "cuda", name
        assert _same(t, host_state[name]), name
    stager = HostToDevice(torch.device("cuda"), buffer_bytes=1 << 12)
    sources = _tensors()
    outs = [stager.copy(t) for t in sources]
    stager.finish()
    assert all(_same(o, s) for o, s in zip(outs, sources, strict=True))
