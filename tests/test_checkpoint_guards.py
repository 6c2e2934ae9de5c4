"""Checkpoints that would give plausible wrong numbers: NaN/Inf weights (caught as they stream
in, naming the tensor), absurd configs (refused by field before anything is built), and the
fingerprint that makes a resumed run refuse other weights under the same path."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from dseval.engine.checkpoint import CheckpointError, ConfigError
from dseval.engine.loader import load_model
from safetensors.torch import load_file, save_file

from dseval.provenance import checkpoint_fingerprint
from engine_fixtures import v3_style_config, write_random_checkpoint

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def fp8_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("fp8"), v3_style_config(vocab_size=256), seed=3,
                                   fp8=True, dtype=torch.bfloat16, num_shards=3)


def copy_of(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "ckpt"))


def poison(d: Path, name: str, fn) -> str:
    """Apply ``fn`` to tensor ``name`` in its shard; returns the shard's file name."""
    shard = json.loads((d / INDEX).read_text())["weight_map"][name]
    tensors = load_file(str(d / shard))
    fn(tensors[name])
    save_file(tensors, str(d / shard), metadata={"format": "pt"})
    return shard


def edit_config(d: Path, **fields: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(fields)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("name,value", [
    ("model.norm.weight", float("nan")),                                   # a final norm
    ("model.embed_tokens.weight", float("inf")),                           # embedding rows
    ("model.layers.0.mlp.up_proj.weight_scale_inv", float("nan")),         # one FP8 block scale
    ("model.layers.1.self_attn.kv_b_proj.weight", float("nan")),           # FP8 weight bytes (NaN encoding)
])
@pytest.mark.parametrize("fp8_weights", ["keep", "dequantize"])
def test_non_finite_weights_name_the_tensor(fp8_ckpt: Path, tmp_path: Path, name: str, value: float, fp8_weights: str) -> None:
    d = copy_of(fp8_ckpt, tmp_path)

    def spoil(t: torch.Tensor) -> None:
        t.view(-1)[:3] = value  # float8_e4m3fn stores NaN as 0x7F; a few rows/entries suffice

    shard = poison(d, name, spoil)
    with pytest.raises(CheckpointError, match="NaN or Inf") as err:
        load_model(str(d), "cpu", torch.float32, fp8_weights=fp8_weights)  # type: ignore[arg-type]
    assert f"'{name}'" in str(err.value) and shard in str(err.value)


def test_healthy_checkpoint_loads(fp8_ckpt: Path) -> None:
    model, _, _ = load_model(str(fp8_ckpt), "cpu", torch.float32, fp8_weights="dequantize")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("fields,needle", [
    ({"num_hidden_layers": 100_000}, "num_hidden_layers"),
    ({"n_routed_experts": 2**20, "n_group": 1, "topk_group": 1}, "n_routed_experts"),
    ({"max_position_embeddings": 10**12}, "max_position_embeddings"),
    ({"num_hidden_layers": 5}, "num_hidden_layers"),           # within bounds, but the weights hold 3 (+1 MTP)
    ({"n_routed_experts": 32, "n_group": 4}, "n_routed_experts"),  # the weights hold 16 experts
])
def test_absurd_or_contradicting_config_is_refused_before_building(fp8_ckpt: Path, tmp_path: Path, fields: dict,
                                                                    needle: str) -> None:
    d = copy_of(fp8_ckpt, tmp_path)
    edit_config(d, **fields)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=needle) as err:
        load_model(str(d), "cpu", torch.float32)
    assert "config.json" in str(err.value) or INDEX in str(err.value)
    assert time.monotonic() - start < 5, "refused before any model was built"


def test_fingerprint_sees_rewritten_weights_not_a_copy(fp8_ckpt: Path, tmp_path: Path) -> None:
    d = copy_of(fp8_ckpt, tmp_path)
    before = checkpoint_fingerprint(d)
    assert before == checkpoint_fingerprint(fp8_ckpt), "a copy of the same weights has the same fingerprint"
    assert {"config.json", INDEX} <= set(before) and sum(n.endswith(".safetensors") for n in before) == 3
    write_random_checkpoint(d, v3_style_config(vocab_size=256), seed=4, fp8=True, dtype=torch.bfloat16, num_shards=3)
    after = checkpoint_fingerprint(d)
    changed = {n for n in before if before[n] != after[n]}
    assert changed and all(n.endswith(".safetensors") for n in changed), "same layout, other weights: shards differ"
