"""Named built-in models. ``tiny``: a deterministic random checkpoint with DeepSeek-V3's full
layout (MLA with q LoRA, YaRN, sigmoid group-limited routing with correction bias, a shared
expert, one MTP layer, FP8 block-quantized linears, the real V3 tokenizer and its vocabulary
padded to 129,280 rows). It is written on first use from a fixed seed into the cache
(``$DSEVAL_CACHE/presets/tiny``, default ``~/.cache/dseval/presets/tiny``) and then loaded
through the normal loader, so it exercises exactly the path real checkpoints take."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from dseval.engine.model.config import ModelConfig
from dseval.engine.model.yarn import V3_YARN

_TINY_VERSION = "1"  # bump when the recipe changes so stale caches are rebuilt
_RETRIEVER_VERSION = "1"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build_config: Callable[[], ModelConfig]
    seed: int
    fp8: bool
    version: str
    #: ``random``: :func:`random_state_dict` from ``seed``; ``retriever``: the constructed weights.
    weights: str = "random"


def small_v3_config(**widths: int) -> ModelConfig:
    """What both presets share with DeepSeek-V3 beyond their widths: the V3 vocabulary and YaRN,
    sigmoid grouped routing over 8 experts in 4 groups, one dense layer then one MoE layer, one
    MTP module."""
    return ModelConfig(
        vocab_size=129280, num_hidden_layers=2, num_nextn_predict_layers=1,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
        topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
        first_k_dense_replace=1, rope_theta=10000.0, rope_scaling=V3_YARN,
        max_position_embeddings=163840, bos_token_id=0, eos_token_id=1, **widths,
    )


def tiny_config() -> ModelConfig:
    """V3 architecture at toy width: 2 layers (1 dense + 1 MoE) + 1 MTP layer."""
    return small_v3_config(hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_attention_heads=2,
                           q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)


def retriever_config() -> ModelConfig:
    """V3 layout sized for the constructed retriever (engine/loading/retriever.py): 64-dim token
    codes in five hidden slots plus a constant dim, 4 heads of nope 3 codes / rope 64 / v 1 code,
    q and kv latents of 4 codes; 1 dense + 1 MoE layer + 1 MTP module, all FFN weights zero."""
    return small_v3_config(hidden_size=328, intermediate_size=64, moe_intermediate_size=32, num_attention_heads=4,
                           q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=64)


def retriever_plain_config() -> ModelConfig:
    """The retriever's negative control: the same model with ``rope_scaling`` removed."""
    return replace(retriever_config(), rope_scaling=None)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", "random-weight DeepSeek-V3 layout (MLA+YaRN, sigmoid grouped MoE, MTP, FP8, V3 tokenizer); "
                   "~24 MB (16 MB of it three 129,280-row vocab tables), for tests and smoke runs", tiny_config, seed=1234, fp8=True, version=_TINY_VERSION),
    "retriever": Preset("retriever", "constructed (not trained) 2-layer V3-layout model that copies the NIAH needle "
                        "(MLA previous-token + induction heads, V3 YaRN); ~170 MB", retriever_config, seed=0,
                        fp8=False, version=_RETRIEVER_VERSION, weights="retriever"),
    "retriever-plain": Preset("retriever-plain", "the retriever with rope_scaling removed: the negative control, "
                              "fails beyond the original 4K window", retriever_plain_config, seed=0, fp8=False,
                              version=_RETRIEVER_VERSION, weights="retriever"),
}


def list_presets() -> list[tuple[str, str]]:
    """(name, description) of each built-in preset."""
    return [(p.name, p.description) for p in PRESETS.values()]


def cache_root() -> Path:
    return Path(os.environ.get("DSEVAL_CACHE", Path.home() / ".cache" / "dseval")).expanduser()


def ensure_preset(name: str) -> Path:
    """Directory of preset ``name``, generating it (atomically) if absent or stale."""
    # Deferred: listing presets (`dseval models`) should not load torch and the model stack.
    from dseval.engine.loading.checkpoint_writer import write_checkpoint
    from dseval.engine.loading.random_init import random_state_dict
    from dseval.engine.loading.retriever import retriever_state_dict

    preset = PRESETS[name]
    target = cache_root() / "presets" / name
    stamp = target / "PRESET_VERSION"
    if stamp.is_file() and stamp.read_text().strip() == preset.version:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        config = preset.build_config()
        # The control shares the retriever's tensors, built from the YaRN config they were sized for.
        state = (retriever_state_dict(retriever_config()) if preset.weights == "retriever"
                 else random_state_dict(config, preset.seed))
        write_checkpoint(tmp, config, state, fp8=preset.fp8, num_shards=2)
        (tmp / "PRESET_VERSION").write_text(preset.version)
        tmp.chmod(0o755)  # mkdtemp creates 0700; the cache may be shared
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
