"""Oracle tests of the engine model against transformers' DeepSeek implementations (CPU, fp32).

Three random configurations are written with our checkpoint writer and loaded both by our
loader and by ``transformers`` (DeepseekV3ForCausalLM; the V2-Lite-style one, whose softmax
routing V3's class does not implement, by DeepseekV2ForCausalLM). Max-abs-diffs are printed
(run with ``-s``) and asserted.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dseval.engine.model.config import ModelConfig
from dseval.engine.loading.loader import load_model
from dseval.engine.model.model import DeepseekV3ForCausalLM
from dseval.engine.model.rope import softmax_scale

sys.path.insert(0, str(Path(__file__).parent))
from engine_fixtures import (
    contiguous_metadata,
    decode_metadata,
    dense_heavy_config,
    prefill_logits,
    v2_lite_style_config,
    v3_style_config,
    write_random_checkpoint,
)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

FP32_TOL = 1e-4  # logits are O(5); fp32 re-association noise measured ~2e-6
CONFIGS = {"v3": v3_style_config, "v2lite": v2_lite_style_config, "dense_heavy": dense_heavy_config}


@dataclass
class Pair:
    name: str
    config: ModelConfig
    path: Path
    ours: DeepseekV3ForCausalLM
    hf: torch.nn.Module


def _load_hf(path: Path, config: ModelConfig, **overrides: object) -> torch.nn.Module:
    cls = transformers.DeepseekV2ForCausalLM if config.model_type == "deepseek_v2" else transformers.DeepseekV3ForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = cls.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager",
                                          output_loading_info=True, **overrides)
    assert not info["missing_keys"], f"transformers did not load {sorted(info['missing_keys'])[:5]}"
    assert not info["mismatched_keys"]
    return model.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    config = CONFIGS[request.param]()
    path = write_random_checkpoint(tmp_path_factory.mktemp(request.param), config, seed=7)
    ours, loaded_cfg, _ = load_model(str(path), dtype=torch.float32)
    assert replace(loaded_cfg, torch_dtype=config.torch_dtype) == config  # config.json round trip
    return Pair(request.param, config, path, ours, _load_hf(path, config))


def _prompts(vocab: int, lens: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lens]


@torch.no_grad()
def _hf_logits(hf: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    return hf(torch.tensor([ids])).logits[0].float()


def test_prefill_logits_match_transformers(pair: Pair) -> None:
    (prompt,) = _prompts(pair.config.vocab_size, [37])
    ours = prefill_logits(pair.ours, [prompt])[0][0]
    ref = _hf_logits(pair.hf, prompt)
    diff = (ours - ref).abs().max().item()
    print(f"\n[{pair.name}] prefill max|diff| = {diff:.3e} (logit scale {ref.abs().max().item():.2f})")
    assert diff < FP32_TOL
    assert ref.std() > 0.1  # the comparison is not between two near-constant outputs


def test_decode_steps_and_greedy_64_match_transformers(pair: Pair) -> None:
    """Prefill, then 64 cached absorbed decode steps; every step's logits vs transformers
    recomputing the whole sequence, and the greedy continuations must be identical."""
    (prompt,) = _prompts(pair.config.vocab_size, [12], seed=1)
    logits, meta, _ = prefill_logits(pair.ours, [prompt])
    ours_tokens, hf_tokens, worst = [], [], 0.0
    seq = list(prompt)
    nxt = int(logits[0][-1].argmax())
    hf_nxt = int(_hf_logits(pair.hf, prompt)[-1].argmax())
    for _step in range(64):
        ours_tokens.append(nxt)
        hf_tokens.append(hf_nxt)
        seq.append(nxt)
        meta, pos = decode_metadata(meta, absorbed=True)
        step_logits = pair.ours.compute_logits(pair.ours(torch.tensor([nxt]), pos, meta))[0]
        ref = _hf_logits(pair.hf, seq)[-1]
        worst = max(worst, (step_logits - ref).abs().max().item())
        nxt, hf_nxt = int(step_logits.argmax()), int(ref.argmax())
    print(f"\n[{pair.name}] 64 decode steps max|diff| = {worst:.3e}; greedy identical: {ours_tokens == hf_tokens}")
    assert worst < FP32_TOL
    assert ours_tokens == hf_tokens
    assert len(set(ours_tokens)) > 1  # the continuation actually moves


def test_absorbed_and_expanded_attention_agree(pair: Pair) -> None:
    prompts = _prompts(pair.config.vocab_size, [9, 21], seed=2)
    expanded, meta_e, _ = prefill_logits(pair.ours, prompts, absorbed=False)
    absorbed, _meta_a, _ = prefill_logits(pair.ours, prompts, absorbed=True)
    prefill_diff = max((a - b).abs().max().item() for a, b in zip(expanded, absorbed))
    # one decode step each way from the same cache
    step = []
    for flag in (False, True):
        m, pos = decode_metadata(meta_e, absorbed=flag)
        m.kv_caches = [c.clone() for c in meta_e.kv_caches]
        step.append(pair.ours.compute_logits(pair.ours(torch.tensor([3, 5]), pos, m)))
    decode_diff = (step[0] - step[1]).abs().max().item()
    print(f"\n[{pair.name}] absorbed vs expanded: prefill {prefill_diff:.3e}, decode {decode_diff:.3e}")
    assert prefill_diff < 1e-4 and decode_diff < 1e-4


def test_batch_of_different_lengths_equals_each_alone(pair: Pair) -> None:
    lens = [5, 30, 1, 17]
    prompts = _prompts(pair.config.vocab_size, lens, seed=3)
    batched, _, _ = prefill_logits(pair.ours, prompts)
    worst = 0.0
    for p, b in zip(prompts, batched):
        alone = prefill_logits(pair.ours, [p])[0][0]
        worst = max(worst, (alone - b).abs().max().item())
    print(f"\n[{pair.name}] batched vs alone max|diff| = {worst:.3e}")
    assert worst < 1e-5


def test_scattered_blocks_and_padded_tables_give_same_logits(pair: Pair) -> None:
    """Paging: sequences on shuffled cache blocks with -1-padded block tables, then a decode step."""
    prompts = _prompts(pair.config.vocab_size, [13, 6], seed=9)
    bs = 4
    ref, ref_meta, _ = prefill_logits(pair.ours, prompts)
    meta, pos = contiguous_metadata(pair.ours, [13, 6], block_size=bs, max_len=32)
    n_blocks = meta.kv_caches[0].shape[0]
    perm = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(0))

    def scatter(m):  # relabel every block through perm, pad unused table entries with -1
        m.slot_mapping = perm[m.slot_mapping // bs] * bs + m.slot_mapping % bs
        used = -(-m.context_lens // bs)
        table = perm[m.block_tables]
        m.block_tables = torch.where(torch.arange(table.shape[1])[None] < used[:, None], table, -1)
        return m

    ids = torch.tensor([t for p in prompts for t in p])
    out = pair.ours.compute_logits(pair.ours(ids, pos, scatter(meta)))
    diff = max((out[:13] - ref[0]).abs().max().item(), (out[13:] - ref[1]).abs().max().item())
    m2, pos2 = decode_metadata(meta, absorbed=True, max_len=32)
    step = pair.ours.compute_logits(pair.ours(torch.tensor([7, 8]), pos2, scatter(m2)))
    r2, pos_r = decode_metadata(ref_meta, absorbed=True)
    ref_step = pair.ours.compute_logits(pair.ours(torch.tensor([7, 8]), pos_r, r2))
    diff = max(diff, (step - ref_step).abs().max().item())
    print(f"\n[{pair.name}] scattered blocks max|diff| = {diff:.3e}")
    assert diff < 1e-5


def test_chunked_prefill_and_small_blocks(pair: Pair) -> None:
    """Prefill in two chunks through 4-token blocks equals one whole-prompt step."""
    (prompt,) = _prompts(pair.config.vocab_size, [23], seed=4)
    whole = prefill_logits(pair.ours, [prompt])[0][0]
    meta, pos = contiguous_metadata(pair.ours, [10], block_size=4)
    first = pair.ours.compute_logits(pair.ours(torch.tensor(prompt[:10]), pos, meta))
    meta2, pos2 = contiguous_metadata(pair.ours, [13], block_size=4, cached_lens=[10], kv_caches=meta.kv_caches)
    second = pair.ours.compute_logits(pair.ours(torch.tensor(prompt[10:]), pos2, meta2))
    diff = (torch.cat([first, second]) - whole).abs().max().item()
    print(f"\n[{pair.name}] chunked prefill max|diff| = {diff:.3e}")
    assert diff < 1e-5


def test_mtp_module_matches_transformers_parts(pair: Pair) -> None:
    """transformers has no MTP forward; the oracle is its own decoder layer (loaded as an extra
    layer from the same files) plus the MTP projections written out in plain torch."""
    cfg = pair.config
    if cfg.num_nextn_predict_layers == 0:
        pytest.skip("no MTP layer in this configuration")
    n = cfg.num_hidden_layers
    hf_ext = _load_hf(pair.path, cfg, num_hidden_layers=n + 1)
    (prompt,) = _prompts(cfg.vocab_size, [19], seed=5)
    _, _, hidden = prefill_logits(pair.ours, [prompt])
    next_ids, h_in = torch.tensor(prompt[1:]), hidden[:-1]  # MTP at i sees token i+1 and h_i
    meta, pos = contiguous_metadata(pair.ours, [len(prompt) - 1])
    ours = pair.ours.mtp_logits(pair.ours.mtp_forward(next_ids, pos, h_in, meta))

    from safetensors import safe_open

    index = json.loads((pair.path / "model.safetensors.index.json").read_text())["weight_map"]

    def w(name: str) -> torch.Tensor:
        full = f"model.layers.{n}.{name}"
        with safe_open(str(pair.path / index[full]), "pt") as f:
            return f.get_tensor(full).float()

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    with torch.no_grad():
        e = rms(F.embedding(next_ids, w("embed_tokens.weight")), w("enorm.weight"))
        h = F.linear(torch.cat([e, rms(h_in, w("hnorm.weight"))], -1), w("eh_proj.weight"))[None]
        T = h.shape[1]
        position_ids = pos[None]
        cos_sin = hf_ext.model.rotary_emb(h, position_ids)
        mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
        out = hf_ext.model.layers[n](h, attention_mask=mask, position_ids=position_ids, position_embeddings=cos_sin)
        out = out[0] if isinstance(out, tuple) else out
        ref = F.linear(rms(out[0], w("shared_head.norm.weight")), w("shared_head.head.weight"))
    diff = (ours - ref).abs().max().item()
    print(f"\n[{pair.name}] MTP logits max|diff| = {diff:.3e}")
    assert diff < FP32_TOL


# ---- FP8 ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp8_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """An FP8 checkpoint and checkpoints of its own dequantization, stored as bf16 and as fp32."""
    from dseval.engine.loading.checkpoint import SCALE_SUFFIX, CheckpointReader
    from dseval.engine.loading.checkpoint_writer import write_checkpoint

    config = v3_style_config()
    fp8_dir = write_random_checkpoint(tmp_path_factory.mktemp("fp8"), config, seed=11, fp8=True, dtype=torch.bfloat16)
    reader = CheckpointReader(fp8_dir)
    assert any(reader.infos[n].dtype == torch.float8_e4m3fn for n in reader.infos)
    out = []
    for dt in (torch.bfloat16, torch.float32):
        sd = {n: reader.get_dense(n, dt) if reader.infos[n].dtype == torch.float8_e4m3fn else reader.get(n)
              for n in reader.infos if not n.endswith(SCALE_SUFFIX)}
        out.append(write_checkpoint(tmp_path_factory.mktemp("deq"), config, sd, fp8=False, dtype=dt))
    return fp8_dir, out[0], out[1]


def test_fp8_checkpoint_matches_its_dequantization(fp8_pair: tuple[Path, Path, Path]) -> None:
    """Stated tolerance: bf16 compute is bit-identical (0.0) to the bf16 dequantized checkpoint;
    fp32 compute agrees with the fp32 dequantized checkpoint to 1e-5. (FP8·scale products are
    not exact in bf16, so fp32-from-FP8 vs bf16-dequantized differs by bf16 rounding, which
    on random tiny models can flip expert choices; that number is only printed.)"""
    fp8_dir, bf16_dir, fp32_dir = fp8_pair
    prompts = _prompts(1024, [16, 7], seed=6)

    def logits(path: Path, dtype: torch.dtype) -> tuple[DeepseekV3ForCausalLM, list[torch.Tensor]]:
        m, _, _ = load_model(str(path), dtype=dtype)
        return m, prefill_logits(m, prompts)[0]

    a, la = logits(fp8_dir, torch.bfloat16)
    b, lb = logits(bf16_dir, torch.bfloat16)
    for (n1, p1), (n2, p2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    bf16_diff = max((x - y).abs().max().item() for x, y in zip(la, lb))
    _, la32 = logits(fp8_dir, torch.float32)
    _, lb32 = logits(fp32_dir, torch.float32)
    fp32_diff = max((x - y).abs().max().item() for x, y in zip(la32, lb32))
    _, lmix = logits(bf16_dir, torch.float32)
    mix_diff = max((x - y).abs().max().item() for x, y in zip(la32, lmix))
    print(f"\n[fp8] vs bf16 dequantization (bf16 compute) max|diff| = {bf16_diff:.3e}; "
          f"vs fp32 dequantization (fp32 compute) = {fp32_diff:.3e}; fp32-from-FP8 vs bf16-dequantized = {mix_diff:.3e}")
    assert bf16_diff == 0.0
    assert fp32_diff < 1e-5


def test_fp8_kept_weights_route_through_fp8_linear(fp8_pair: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``fp8_weights='keep'`` linears hold e4m3 weights and call kernels.fp8_gemm.fp8_linear
    (stubbed here with a dequantizing reference, since the real kernel is GPU-only)."""
    import types

    from dseval.engine.model.fp8_blocks import dequantize_blockwise

    calls = []

    def fake_fp8_linear(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        calls.append(w.shape)
        return F.linear(x, dequantize_blockwise(w, s, (128, 128), x.dtype))

    monkeypatch.setitem(sys.modules, "dseval.kernels.fp8_gemm", types.SimpleNamespace(fp8_linear=fake_fp8_linear))
    fp8_dir = fp8_pair[0]
    kept, _, _ = load_model(str(fp8_dir), dtype=torch.float32, fp8_weights="keep")
    deq, _, _ = load_model(str(fp8_dir), dtype=torch.float32, fp8_weights="dequantize")
    assert kept.model.layers[0].self_attn.q_a_proj.weight.dtype == torch.float8_e4m3fn
    prompts = _prompts(1024, [10], seed=8)
    lk = prefill_logits(kept, prompts, absorbed=True)[0][0]
    assert calls, "fp8_linear was never called"
    ld = prefill_logits(deq, prompts, absorbed=True)[0][0]
    assert (lk - ld).abs().max().item() < 1e-4


# ---- small pure checks ----------------------------------------------------------------------------

def test_v3_softmax_scale_matches_paper_value() -> None:
    raw = {"vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "num_hidden_layers": 61,
           "num_attention_heads": 128, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
           "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 256, "moe_intermediate_size": 2048,
           "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
           "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                            "original_max_position_embeddings": 4096, "type": "yarn"}}
    cfg = ModelConfig.from_dict(raw)
    import math

    expected = 192 ** -0.5 * (0.1 * math.log(40) + 1) ** 2
    assert abs(softmax_scale(cfg) - expected) < 1e-12
    assert abs(softmax_scale(cfg) - 0.13523) < 1e-5


def test_correction_bias_only_selects_experts() -> None:
    """Changing e_score_correction_bias changes which experts are chosen, never the weights'
    source: the chosen weights equal the unbiased sigmoid scores (renormalized, scaled)."""
    from dseval.engine.model.moe import Router

    cfg = v3_style_config()
    r = Router(cfg)
    torch.manual_seed(0)
    r.weight.data = torch.randn_like(r.weight)
    r.e_score_correction_bias.data = torch.zeros(cfg.n_routed_experts)
    x = torch.randn(5, cfg.hidden_size)
    _w0, i0 = r(x)
    r.e_score_correction_bias.data = torch.zeros(cfg.n_routed_experts).index_fill(0, torch.tensor([0, 1]), 10.0)
    w1, i1 = r(x)
    assert (i1 == 0).any(dim=1).all() and (i1 == 1).any(dim=1).all()  # boosted experts always chosen
    scores = F.linear(x, r.weight).sigmoid()
    chosen = scores.gather(1, i1)
    torch.testing.assert_close(w1, chosen / chosen.sum(-1, keepdim=True) * cfg.routed_scaling_factor)
    assert not torch.equal(i0.sort(1).values, i1.sort(1).values)


def test_group_limited_greedy_router_matches_transformers_v2() -> None:
    """V2's group_limited_greedy (group score = its best expert, softmax) against transformers'
    DeepseekV2TopkRouter, on many tokens; the oracle configs above use n_group=1 for V2."""
    from dseval.engine.model.moe import Router

    cfg = replace(v2_lite_style_config(), topk_method="group_limited_greedy", n_group=4, topk_group=2)
    hf_cfg = transformers.DeepseekV2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                              if k in ("hidden_size", "n_routed_experts", "num_experts_per_tok",
                                                       "n_group", "topk_group", "topk_method",
                                                       "routed_scaling_factor")})
    hf_router = transformers.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2TopkRouter(hf_cfg)
    ours = Router(cfg)
    torch.manual_seed(1)
    weight = torch.randn(cfg.n_routed_experts, cfg.hidden_size)
    hf_router.weight.data.copy_(weight)
    ours.weight.data = weight.clone()
    x = torch.randn(512, cfg.hidden_size)
    w_ours, i_ours = ours(x)
    with torch.no_grad():
        _, w_hf, i_hf = hf_router(x)
    order_o, order_h = i_ours.argsort(1), i_hf.argsort(1)
    assert torch.equal(i_ours.gather(1, order_o), i_hf.gather(1, order_h))
    diff = (w_ours.gather(1, order_o) - w_hf.gather(1, order_h)).abs().max().item()
    assert diff < 1e-6


def test_tiny_preset_loads_and_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dseval.engine.loading.presets import list_presets

    monkeypatch.setenv("DSEVAL_CACHE", str(tmp_path))
    assert ("tiny" in dict(list_presets())) and dict(list_presets())["tiny"]
    model, cfg, tok = load_model("tiny", dtype=torch.float32)
    d = tmp_path / "presets" / "tiny"
    assert cfg.vocab_size == 129280 and tok.vocab_size == 128815
    assert cfg.q_lora_rank and cfg.rope_scaling and cfg.num_nextn_predict_layers == 1 and cfg.quantization
    assert cfg.scoring_func == "sigmoid" and cfg.n_group > 1 and cfg.n_shared_experts == 1
    size_mb = sum(f.stat().st_size for f in d.iterdir()) / 2**20
    assert size_mb < 40, size_mb
    stamp = (d / "config.json").stat().st_mtime_ns
    model2, _, _ = load_model("tiny", dtype=torch.float32)  # cached: not regenerated
    assert (d / "config.json").stat().st_mtime_ns == stamp
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hi"}]))
    logits = prefill_logits(model, [ids])[0][0]
    assert torch.isfinite(logits).all() and logits.shape == (len(ids), 129280)
    torch.testing.assert_close(logits, prefill_logits(model2, [ids])[0][0], rtol=0, atol=0)


def test_tiny_preset_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dseval.engine.loading.presets import ensure_preset

    monkeypatch.setenv("DSEVAL_CACHE", str(tmp_path / "a"))
    a = ensure_preset("tiny")
    monkeypatch.setenv("DSEVAL_CACHE", str(tmp_path / "b"))
    b = ensure_preset("tiny")
    for f in sorted(a.glob("*.safetensors")):
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name


def test_chat_template_and_special_ids() -> None:
    from dseval.engine.loading.checkpoint_writer import default_tokenizer_dir
    from dseval.engine.loading.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(default_tokenizer_dir())
    text = tok.apply_chat_template([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}],
                                   add_generation_prompt=True)
    assert text == "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi<｜Assistant｜>"
    assert tok.bos_id == 0 and tok.eos_id == 1
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and tok.decode(ids) == text
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False).endswith("Hi")
