"""Checkpoint writer/reader: official HF DeepSeek-V3 layout, FP8 block quantization, streaming,
and the corrupted-checkpoint battery (every failure is a CheckpointError naming tensor and file)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from dseval.engine.errors import CheckpointError, ConfigError, EngineError
from dseval.engine.loading.checkpoint import CheckpointReader
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.fp8_blocks import dequantize_blockwise, quantize_blockwise, scale_shape
from dseval.engine.loading.loader import load_model
from safetensors.torch import load_file, save_file

from dseval.errors import UserError
from dseval.provenance import checkpoint_fingerprint

sys.path.insert(0, str(Path(__file__).parent))
from engine_fixtures import v3_style_config, write_random_checkpoint

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def good_fp8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("good"), v3_style_config(vocab_size=256), seed=3,
                                   fp8=True, dtype=torch.bfloat16, num_shards=3)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _weight_map(d: Path) -> dict[str, str]:
    return json.loads((d / INDEX).read_text())["weight_map"]


def _rewrite_shard(d: Path, tensor: str, fn) -> str:  # fn(dict) mutates the shard's tensors
    shard = _weight_map(d)[tensor]
    tensors = load_file(str(d / shard))
    fn(tensors)
    save_file(tensors, str(d / shard), metadata={"format": "pt"})
    return shard


def test_layout_matches_official_v3(good_fp8: Path) -> None:
    cfg = json.loads((good_fp8 / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                          "weight_block_size": [128, 128]}
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"] and cfg["rope_scaling"]["type"] == "yarn"
    wm = _weight_map(good_fp8)
    assert len(set(wm.values())) == 3
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in good_fp8.iterdir()}
    r = CheckpointReader(good_fp8)
    info = r.infos
    w = "model.layers.1.mlp.experts.3.gate_proj.weight"
    assert info[w].dtype == torch.float8_e4m3fn
    assert info[w + "_scale_inv"].dtype == torch.float32 and info[w + "_scale_inv"].shape == (1, 1)
    assert info["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
    assert info["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert info["lm_head.weight"].dtype == torch.bfloat16
    assert "model.layers.3.shared_head.head.weight" in info and "model.layers.3.eh_proj.weight" in info
    assert "model.layers.0.mlp.gate_proj.weight" in info  # first_k_dense_replace=1: layer 0 dense


def test_blockwise_fp8_round_trip() -> None:
    torch.manual_seed(0)
    w = torch.randn(300, 200) * torch.logspace(-2, 1, 200)  # columns of very different magnitude
    q, s = quantize_blockwise(w, (128, 128))
    assert q.dtype == torch.float8_e4m3fn and s.shape == scale_shape((300, 200), (128, 128)) == (3, 2)
    deq = dequantize_blockwise(q, s, (128, 128), torch.float32)
    tile_max = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:300, :200] * 448
    rel = ((deq - w).abs() / tile_max).max().item()
    print(f"\n[fp8] block round trip max error / tile absmax = {rel:.3e}")
    assert rel < 2 ** -4  # e4m3: 3 mantissa bits
    assert ((deq - w).abs() <= w.abs() * 2 ** -4 + tile_max * 2 ** -9).all()  # relative, except subnormals


def test_reader_streams_one_tensor_at_a_time(good_fp8: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading never reads whole shards: only safe_open.get_tensor, once per stored tensor."""
    import safetensors.torch as st

    monkeypatch.setattr(st, "load_file", lambda *a, **k: pytest.fail("whole-shard read"))
    from dseval.engine.loading import checkpoint as ck

    reads: list[str] = []
    orig = ck.CheckpointReader.get

    def counting_get(self: CheckpointReader, name: str) -> torch.Tensor:
        reads.append(name)
        return orig(self, name)

    monkeypatch.setattr(ck.CheckpointReader, "get", counting_get)
    model, _, _ = load_model(str(good_fp8), dtype=torch.float32)
    stored = CheckpointReader(good_fp8).infos
    assert sorted(set(reads)) == sorted(stored) and len(reads) == len(stored)
    assert model.model.layers[1].self_attn.q_a_proj.weight.dtype == torch.float32  # dequantized on CPU


# ---- corrupted-checkpoint battery -------------------------------------------------------------------

def _expect_error(d: Path, *needles: str, cls: type[Exception] = CheckpointError) -> str:
    with pytest.raises(cls) as ei:
        load_model(str(d), dtype=torch.float32)
    msg = str(ei.value)
    assert isinstance(ei.value, EngineError)  # the harness adapter reports it as a UserError
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def test_truncated_shard(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    shard = d / sorted(set(_weight_map(d).values()))[1]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    _expect_error(d, shard.name, "truncated")


def test_missing_tensor(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    name = "model.layers.2.self_attn.kv_a_layernorm.weight"
    _rewrite_shard(d, name, lambda t: t.pop(name))
    index = json.loads((d / INDEX).read_text())
    del index["weight_map"][name]
    (d / INDEX).write_text(json.dumps(index))
    _expect_error(d, name, INDEX, "missing")


def test_tensor_missing_from_shard_but_indexed(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    name = "model.norm.weight"
    shard = _rewrite_shard(d, name, lambda t: t.pop(name))
    _expect_error(d, name, shard)


def test_wrong_shape(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    name = "model.layers.1.self_attn.kv_a_layernorm.weight"
    shard = _rewrite_shard(d, name, lambda t: t.__setitem__(name, torch.ones(31, dtype=torch.bfloat16)))
    _expect_error(d, name, shard, "[31]", "[32]")


def test_wrong_dtype(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    name = "model.layers.0.input_layernorm.weight"
    shard = _rewrite_shard(d, name, lambda t: t.__setitem__(name, torch.ones(64, dtype=torch.int32)))
    _expect_error(d, name, shard, "int32")


def test_wrong_scale_dtype_and_missing_scale(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    name = "model.layers.0.mlp.up_proj.weight"
    shard = _rewrite_shard(d, name, lambda t: t.__setitem__(name + "_scale_inv", t[name + "_scale_inv"].bfloat16()))
    _expect_error(d, name + "_scale_inv", shard, "float32")
    d2 = _copy(good_fp8, tmp_path / "b")
    shard = _rewrite_shard(d2, name, lambda t: t.pop(name + "_scale_inv"))
    index = json.loads((d2 / INDEX).read_text())
    del index["weight_map"][name + "_scale_inv"]
    (d2 / INDEX).write_text(json.dumps(index))
    _expect_error(d2, name, shard, "_scale_inv")


def test_extra_tensor(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    name = "model.layers.0.self_attn.rotary_emb.inv_freq"
    shard = _rewrite_shard(d, "model.norm.weight", lambda t: t.__setitem__(name, torch.ones(4)))
    index = json.loads((d / INDEX).read_text())
    index["weight_map"][name] = shard
    (d / INDEX).write_text(json.dumps(index))
    _expect_error(d, name, shard, "unexpected")


def test_bad_index_json(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    (d / INDEX).write_text('{"weight_map": {"model.norm.weight": ')
    _expect_error(d, INDEX, "JSON")
    (d / INDEX).write_text(json.dumps({"weight_map": {"model.norm.weight": "model-00009-of-00009.safetensors"}}))
    _expect_error(d, INDEX, "model.norm.weight", "does not exist")


@pytest.mark.parametrize("field,value,needle", [
    ("n_group", 3, "n_group"),
    ("hidden_size", "sixty-four", "hidden_size"),
    ("num_key_value_heads", 1, "num_key_value_heads"),
    ("scoring_func", "relu", "scoring_func"),
    ("rope_scaling", {"type": "yarn"}, "rope_scaling"),
])
def test_bad_config_field(good_fp8: Path, tmp_path: Path, field: str, value: object, needle: str) -> None:
    d = _copy(good_fp8, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = value
    (d / "config.json").write_text(json.dumps(cfg))
    _expect_error(d, needle, "config.json", cls=ConfigError)


def test_config_contradicting_weights(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["kv_lora_rank"] = 48  # weights were written for 32
    (d / "config.json").write_text(json.dumps(cfg))
    msg = _expect_error(d, "kv_a", "config.json contradicts")
    assert ".safetensors" in msg


def test_bf16_checkpoint_without_quantization_rejects_fp8_tensor(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["quantization_config"]
    (d / "config.json").write_text(json.dumps(cfg))
    _expect_error(d, "quantization_config", ".safetensors")


def test_config_round_trip_and_v2_defaults() -> None:
    cfg = v3_style_config()
    again = ModelConfig.from_dict(cfg.to_hf_dict())
    assert again == cfg
    raw = replace(cfg, model_type="deepseek_v2", n_group=1, topk_group=1).to_hf_dict()
    del raw["topk_method"]  # V2 configs predate the field; their routing is plain greedy top-k
    v2 = ModelConfig.from_dict(raw)
    assert v2.model_type == "deepseek_v2" and v2.topk_method == "greedy"
    with pytest.raises(ConfigError, match="vocab_size"):
        ModelConfig.from_dict({k: v for k, v in cfg.to_hf_dict().items() if k != "vocab_size"})


# ---- guards against plausible wrong numbers: NaN/Inf weights, absurd configs, fingerprints ----
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
def test_non_finite_weights_name_the_tensor(good_fp8: Path, tmp_path: Path, name: str, value: float, fp8_weights: str) -> None:
    d = _copy(good_fp8, tmp_path)

    def spoil(t: torch.Tensor) -> None:
        t.view(-1)[:3] = value  # float8_e4m3fn stores NaN as 0x7F; a few rows/entries suffice

    shard = _rewrite_shard(d, name, lambda tensors: spoil(tensors[name]))
    with pytest.raises(CheckpointError, match="NaN or Inf") as err:
        load_model(str(d), "cpu", torch.float32, fp8_weights=fp8_weights)  # type: ignore[arg-type]
    assert f"'{name}'" in str(err.value) and shard in str(err.value)


def test_healthy_checkpoint_loads(good_fp8: Path) -> None:
    model, _, _ = load_model(str(good_fp8), "cpu", torch.float32, fp8_weights="dequantize")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("fields,needle", [
    ({"num_hidden_layers": 100_000}, "num_hidden_layers"),
    ({"n_routed_experts": 2**20, "n_group": 1, "topk_group": 1}, "n_routed_experts"),
    ({"max_position_embeddings": 10**12}, "max_position_embeddings"),
    ({"num_hidden_layers": 5}, "num_hidden_layers"),           # within bounds, but the weights hold 3 (+1 MTP)
    ({"n_routed_experts": 32, "n_group": 4}, "n_routed_experts"),  # the weights hold 16 experts
])
def test_absurd_or_contradicting_config_is_refused_before_building(good_fp8: Path, tmp_path: Path, fields: dict,
                                                                    needle: str) -> None:
    d = _copy(good_fp8, tmp_path)
    edit_config(d, **fields)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=needle) as err:
        load_model(str(d), "cpu", torch.float32)
    assert "config.json" in str(err.value) or INDEX in str(err.value)
    assert time.monotonic() - start < 5, "refused before any model was built"


def test_fingerprint_sees_rewritten_weights_not_a_copy(good_fp8: Path, tmp_path: Path) -> None:
    d = _copy(good_fp8, tmp_path)
    before = checkpoint_fingerprint(d)
    assert before == checkpoint_fingerprint(good_fp8), "a copy of the same weights has the same fingerprint"
    assert {"config.json", INDEX} <= set(before) and sum(n.endswith(".safetensors") for n in before) == 3
    write_random_checkpoint(d, v3_style_config(vocab_size=256), seed=4, fp8=True, dtype=torch.bfloat16, num_shards=3)
    after = checkpoint_fingerprint(d)
    changed = {n for n in before if before[n] != after[n]}
    assert changed and all(n.endswith(".safetensors") for n in changed), "same layout, other weights: shards differ"
