"""Long-context numerics on the CPU: the engine's last-position logits at 8K tokens, twice
DeepSeek-V3-style YaRN's original window, against the float64 chunked reference of
bench/long_context_numerics.py (the GPU runs the same comparison at 32K-128K)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "long_context_numerics.py"


def _script():
    spec = importlib.util.spec_from_file_location("long_context_numerics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_engine_matches_float64_reference_beyond_the_original_window() -> None:
    numerics = _script()
    assert numerics.V3_YARN.factor == 40 and numerics.V3_YARN.mscale == numerics.V3_YARN.mscale_all_dim == 1
    length = 2 * numerics.ORIGINAL_POSITIONS
    [row] = numerics.measure([length], "cpu", torch.float32, chunk=2048)
    print(f"\n8K: engine rel {row['engine_rel']:.2e} max|diff| {row['engine_max_abs']:.2e}; "
          f"plain RoPE rel {row['no_yarn_rel']:.2e}")
    assert row["engine_rel"] < 2e-5 and row["engine_top1_agree"] == 1.0  # fp32 engine; measured ~2e-6
    assert row["no_yarn_rel"] > 1e-2  # the control: getting YaRN wrong moves the logits 1000x more
    assert row["logit_scale"] > 1.0  # not a comparison of near-zero outputs


def test_reference_yarn_tables_follow_deepseek_v3() -> None:
    """The reference's own YaRN: the highest-frequency pair keeps its frequency, the lowest is
    divided by the factor, and the softmax scale carries mscale(40, 1)^2."""
    numerics = _script()
    config = numerics.numerics_config(16)
    positions = torch.tensor([1.0], dtype=torch.float64)
    cos, sin, scale = numerics.yarn_tables(config, positions, yarn=True)
    plain_cos, plain_sin, plain_scale = numerics.yarn_tables(config, positions, yarn=False)
    angle, plain_angle = torch.atan2(sin, cos)[0], torch.atan2(plain_sin, plain_cos)[0]
    assert angle[0] == pytest.approx(plain_angle[0]) and angle[-1] == pytest.approx(plain_angle[-1] / 40)
    assert scale == pytest.approx(plain_scale * (0.1 * torch.log(torch.tensor(40.0)).item() + 1) ** 2)
