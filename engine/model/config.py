"""Model configuration of DeepSeek-V2/V3-class checkpoints (HF ``config.json`` layout).

Covers the hyper-parameters of DeepSeek-V2 §2.1 (Multi-head Latent Attention: ``q_lora_rank``,
``kv_lora_rank``, ``qk_nope_head_dim``/``qk_rope_head_dim``/``v_head_dim``), DeepSeek-V2 §2.2 and
DeepSeek-V3 §2.1.2 (DeepSeekMoE: shared/routed experts, ``scoring_func``, ``topk_method``,
``n_group``/``topk_group`` device-limited routing, ``routed_scaling_factor``), DeepSeek-V2
Appendix / YaRN (``rope_scaling``), DeepSeek-V3 §2.2 (``num_nextn_predict_layers`` = MTP depth)
and §3.3 (FP8 ``quantization_config`` with 128x128 weight blocks).

Every field is read from ``config.json`` and checked here, so a bad field is reported once, by
name and file, instead of surfacing as a shape error deep inside the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dseval.engine.errors import CheckpointError, ConfigError
from dseval.engine.model.yarn import RopeScaling


@dataclass(frozen=True)
class Fp8Quantization:
    """``quantization_config`` of the official FP8 release (DeepSeek-V3 §3.3.2: 128x128 blocks)."""

    fmt: str = "e4m3"
    activation_scheme: str = "dynamic"
    weight_block_size: tuple[int, int] = (128, 128)
    quant_method: str = "fp8"

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": self.quant_method,
            "fmt": self.fmt,
            "activation_scheme": self.activation_scheme,
            "weight_block_size": list(self.weight_block_size),
        }


#: Upper bounds far above any released DeepSeek-class model (V3: 61 layers, 256 experts,
#: 163840 positions) and far below sizes whose tables alone would exhaust memory: a typo or a
#: corrupt config.json is refused by name before anything is allocated.
LIMITS = {
    "vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 20, "num_hidden_layers": 1024,
    "num_attention_heads": 1024, "kv_lora_rank": 1 << 14, "qk_nope_head_dim": 1024, "qk_rope_head_dim": 1024,
    "v_head_dim": 1024, "q_lora_rank": 1 << 16, "moe_intermediate_size": 1 << 18, "n_routed_experts": 1 << 14,
    "n_shared_experts": 64, "num_experts_per_tok": 1024, "num_nextn_predict_layers": 64,
    "max_position_embeddings": 1 << 22,
}

_TOPK_METHODS = ("noaux_tc", "group_limited_greedy", "greedy")
_SCORING = ("sigmoid", "softmax")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one DeepSeek-V2/V3-class model; field names follow HF ``config.json``."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    moe_intermediate_size: int = 0
    n_routed_experts: int | None = None  # None: every layer is dense
    n_shared_experts: int = 0
    num_experts_per_tok: int = 1
    n_group: int = 1
    topk_group: int = 1
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    num_nextn_predict_layers: int = 0
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rope_interleave: bool = True  # DeepSeek's rope dims are (x0,x1),(x2,x3)... pairs
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    quantization: Fp8Quantization | None = None
    model_type: str = "deepseek_v3"
    torch_dtype: str = "bfloat16"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unknown keys, kept for round trips

    # ---- derived -------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def num_attention_layers(self) -> int:
        return self.num_hidden_layers + self.num_nextn_predict_layers

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether decoder layer ``layer_idx`` (MTP layers included) uses DeepSeekMoE."""
        return (
            self.n_routed_experts is not None
            and layer_idx >= self.first_k_dense_replace
            and layer_idx % self.moe_layer_freq == 0
        )

    # ---- validation ------------------------------------------------------------------------------
    def validate(self, source: str = "config") -> None:
        """Raise :class:`ConfigError` naming the field when the config contradicts itself."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: field '{name}' = {getattr(self, name)!r}: {why}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise bad(name, "must be a positive integer")
        for name, most in LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, (int, float)) and v > most:
                raise bad(name, f"exceeds {most}, far beyond any DeepSeek-class model; config.json is wrong")
        if not isinstance(self.max_position_embeddings, int) or self.max_position_embeddings <= 0:
            raise bad("max_position_embeddings", "must be a positive integer")
        if not isinstance(self.qk_nope_head_dim, int) or self.qk_nope_head_dim < 0:
            raise bad("qk_nope_head_dim", "must be a non-negative integer")
        if self.qk_rope_head_dim % 2:
            raise bad("qk_rope_head_dim", "must be even (RoPE rotates pairs)")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            raise bad("q_lora_rank", "must be a positive integer or null")
        if self.num_nextn_predict_layers < 0:
            raise bad("num_nextn_predict_layers", "must be >= 0")
        if self.hidden_act != "silu":
            raise bad("hidden_act", "only 'silu' is supported")
        if self.rms_norm_eps <= 0:
            raise bad("rms_norm_eps", "must be > 0")
        if self.n_routed_experts is not None:
            e = self.n_routed_experts
            if not isinstance(e, int) or e <= 0:
                raise bad("n_routed_experts", "must be a positive integer or null")
            if self.moe_intermediate_size <= 0:
                raise bad("moe_intermediate_size", "must be > 0 when n_routed_experts is set")
            if self.scoring_func not in _SCORING:
                raise bad("scoring_func", f"must be one of {_SCORING}")
            if self.topk_method not in _TOPK_METHODS:
                raise bad("topk_method", f"must be one of {_TOPK_METHODS}")
            if not isinstance(self.n_group, int) or self.n_group <= 0 or e % self.n_group:
                raise bad("n_group", f"must be a positive divisor of n_routed_experts={e}")
            if not 0 < self.topk_group <= self.n_group:
                raise bad("topk_group", f"must be in 1..n_group={self.n_group}")
            if not 0 < self.num_experts_per_tok <= e:
                raise bad("num_experts_per_tok", f"must be in 1..n_routed_experts={e}")
            if self.topk_method != "greedy" and self.num_experts_per_tok > self.topk_group * (e // self.n_group):
                raise bad("num_experts_per_tok", "exceeds the experts in the topk_group selected groups")
            if self.topk_method == "noaux_tc" and e // self.n_group < 2:
                raise bad("n_group", "noaux_tc scores a group by its top-2 experts; groups need >= 2 experts")
            if self.moe_layer_freq <= 0:
                raise bad("moe_layer_freq", "must be >= 1")
            if self.n_shared_experts < 0:
                raise bad("n_shared_experts", "must be >= 0")
        if self.first_k_dense_replace < 0:
            raise bad("first_k_dense_replace", "must be >= 0")
        rs = self.rope_scaling
        if rs is not None:
            if rs.type != "yarn":
                raise bad("rope_scaling", "only YaRN ('yarn') rope scaling is supported")
            if not rs.factor or rs.factor <= 0 or rs.original_max_position_embeddings <= 0:
                raise bad("rope_scaling", "needs factor > 0 and original_max_position_embeddings > 0")
        if self.quantization is not None:
            q = self.quantization
            if q.quant_method != "fp8" or q.fmt != "e4m3":
                raise bad("quantization", "only quant_method 'fp8' with fmt 'e4m3' is supported")
            if len(q.weight_block_size) != 2 or min(q.weight_block_size) <= 0:
                raise bad("quantization", "weight_block_size must be two positive ints")

    # ---- (de)serialization -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from a ``config.json`` dict (HF DeepSeek-V2/V3 layout) and validate it."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        known = {f.name for f in fields(cls)} - {"rope_scaling", "quantization", "extra"}
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                    "v_head_dim")
        for name in required:
            if name not in raw:
                raise ConfigError(f"{source}: required field '{name}' is missing")
        kwargs: dict[str, Any] = {k: raw[k] for k in known if k in raw}
        kv_heads = raw.get("num_key_value_heads", raw["num_attention_heads"])
        if kv_heads != raw["num_attention_heads"]:
            raise ConfigError(f"{source}: field 'num_key_value_heads' = {kv_heads!r}: MLA needs it equal to "
                              f"num_attention_heads={raw['num_attention_heads']}")
        if raw.get("attention_bias"):
            raise ConfigError(f"{source}: field 'attention_bias' = true is not supported (DeepSeek has no biases)")
        rs = raw.get("rope_scaling") or None
        if rs is None and isinstance(raw.get("rope_parameters"), dict):  # transformers-5 spelling
            rp = raw["rope_parameters"]
            rs = rp if rp.get("rope_type", rp.get("type", "default")) != "default" else None
            kwargs.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
        if isinstance(rs, dict) and rs.get("rope_type", rs.get("type")) == "default":
            rs = None
        if "num_nextn_predict_layers" not in raw and "num_mtp_layers" in raw:  # transformers-5 alias
            kwargs["num_nextn_predict_layers"] = raw["num_mtp_layers"]
        if rs is not None:
            if not isinstance(rs, dict):
                raise ConfigError(f"{source}: field 'rope_scaling' must be an object or null")
            try:
                kwargs["rope_scaling"] = RopeScaling(
                    type=str(rs.get("type", rs.get("rope_type", "yarn"))),
                    factor=float(rs["factor"]),
                    original_max_position_embeddings=int(rs["original_max_position_embeddings"]),
                    beta_fast=float(rs.get("beta_fast", 32)),
                    beta_slow=float(rs.get("beta_slow", 1)),
                    mscale=float(rs.get("mscale", 1.0)),
                    mscale_all_dim=float(rs.get("mscale_all_dim", 0.0)),
                    attention_factor=None if rs.get("attention_factor") is None else float(rs["attention_factor"]),
                )
            except (KeyError, TypeError, ValueError) as e:
                raise ConfigError(f"{source}: field 'rope_scaling' is malformed: {e!r}") from None
        qc = raw.get("quantization_config")
        if qc is not None:
            if not isinstance(qc, dict):
                raise ConfigError(f"{source}: field 'quantization_config' must be an object")
            try:
                kwargs["quantization"] = Fp8Quantization(
                    quant_method=str(qc.get("quant_method", "")),
                    fmt=str(qc.get("fmt", "e4m3")),
                    activation_scheme=str(qc.get("activation_scheme", "dynamic")),
                    weight_block_size=tuple(int(x) for x in qc.get("weight_block_size", (128, 128))),
                )
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{source}: field 'quantization_config' is malformed: {e!r}") from None
        if "n_group" in kwargs and kwargs["n_group"] is None:
            kwargs["n_group"] = 1
        if "topk_group" in kwargs and kwargs["topk_group"] is None:
            kwargs["topk_group"] = 1
        if raw.get("model_type") == "deepseek_v2" and "topk_method" not in raw:
            kwargs["topk_method"] = "greedy"
        for k in ("rope_theta", "routed_scaling_factor", "rms_norm_eps"):
            if k in kwargs:
                if not isinstance(kwargs[k], (int, float)) or isinstance(kwargs[k], bool):
                    raise ConfigError(f"{source}: field '{k}' = {kwargs[k]!r}: must be a number")
                kwargs[k] = float(kwargs[k])
        ints = [f.name for f in fields(cls) if f.type in ("int", "int | None")]
        for k in ints:
            v = kwargs.get(k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise ConfigError(f"{source}: field '{k}' = {v!r}: must be an integer")
        kwargs["extra"] = {k: v for k, v in raw.items() if k not in known}
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: config.json not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
        return cls.from_dict(raw, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The official HF ``config.json`` layout (what DeepSeek ships and transformers reads)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("rope_scaling", "quantization", "extra")}
        arch = "DeepseekV2ForCausalLM" if self.model_type == "deepseek_v2" else "DeepseekV3ForCausalLM"
        d.update(architectures=[arch], num_key_value_heads=self.num_attention_heads, attention_bias=False,
                 attention_dropout=0.0, initializer_range=0.02, use_cache=True, ep_size=1,
                 rope_scaling=None if self.rope_scaling is None else self.rope_scaling.to_dict())
        if self.quantization is not None:
            d["quantization_config"] = self.quantization.to_dict()
        merged = dict(self.extra)
        merged.update(d)
        return merged

