"""Deterministic random weights for a :class:`ModelConfig` (presets and tests; no paper section).

Scales keep activations O(1) through a few layers (linear weights ~ N(0, 1/fan_in), norm
weights near 1, embeddings ~ N(0, 1)) so logits and routing decisions are well separated and a
tiny model's greedy output is stable against fp32 rounding differences between implementations.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from dseval.engine.errors import LayoutError
from dseval.engine.loading.validation import expected_tensors
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.fp8_blocks import FP8_DTYPE, scale_shape
from dseval.engine.model.linear import Linear
from dseval.engine.model.model import DeepseekV3ForCausalLM
from dseval.engine.model.moe import Router
from dseval.engine.model.vocab_parallel import VocabParallelEmbedding, VocabParallelHead
from dseval.engine.parallel.context import ParallelContext
from dseval.engine.parallel.sharding import TensorShard


def random_state_dict(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Checkpoint-named float32 tensors for every parameter the model needs, from ``seed``."""
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(config)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, exp in sorted(expected_tensors(model).items()):
        shape = exp.shape
        if name.endswith(("norm.weight", "layernorm.weight")):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("e_score_correction_bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("embed_tokens.weight"):
            t = torch.randn(shape, generator=gen)
        else:  # linear weights and the router [out, in]
            t = torch.randn(shape, generator=gen) * shape[-1] ** -0.5
        out[name] = t.float()
    # The MTP module's embedding is a copy of the main one in official checkpoints.
    for name in list(out):
        if name.endswith(".embed_tokens.weight") and name != "model.embed_tokens.weight":
            out[name] = out["model.embed_tokens.weight"].clone()
    return out


def _name_seed(seed: int, name: str) -> int:
    """A per-tensor seed that depends only on the checkpoint name (stable across processes)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**62


def _local_part(full: torch.Tensor, shard: TensorShard | None, length: int | None = None,
                block: int = 1) -> torch.Tensor:
    """This rank's part of a full checkpoint tensor. For a block-scale grid, ``length`` is the
    weight's size along the split dimension and ``block`` its block size there."""
    if shard is None:
        return full
    start, stop = shard.bounds(full.shape[shard.dim] if length is None else length)
    first, last = start // block, -(-stop // block)
    return full.narrow(shard.dim, first, last - first).contiguous()


def random_fp8_model(config: ModelConfig, device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
                     seed: int = 0, parallel: ParallelContext = ParallelContext()) -> DeepseekV3ForCausalLM:  # noqa: B008
    """A :class:`DeepseekV3ForCausalLM` with random weights drawn straight on ``device``: every
    linear except the output head as e4m3 with float32 128x128 block scales (the layout of the
    official FP8 release), head/embeddings/norms in ``dtype``, router in float32.

    Why: benchmarking at real dimensions (W3: ~27 GB; the 671B model across 8 GPUs) without
    writing or reading a checkpoint; the scales vary per block so the FP8 kernels' scale handling
    is exercised. Values follow :func:`random_state_dict`'s scales (linear weights ~ N(0, 1/fan_in)).
    Each checkpoint tensor is drawn whole from a generator seeded by its name, then cut to this
    rank's part of ``parallel``: every TP/EP layout holds the same model, so a sharded run can be
    checked against a single GPU's.
    """
    dev = torch.device(device)
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(config, parallel)
    block = config.quantization.weight_block_size if config.quantization else (128, 128)

    def full_shape(local: tuple[int, ...], shard: TensorShard | None) -> tuple[int, ...]:
        if shard is None:
            return local
        return tuple(n * shard.count if d == shard.dim else n for d, n in enumerate(local))

    for mod_name, module in model.named_modules():
        shard = getattr(module, "shard", None)
        if isinstance(module, Linear) and not isinstance(module, VocabParallelHead):
            if shard is not None and (module.out_features, module.in_features)[shard.dim] % block[shard.dim]:
                raise LayoutError(f"{mod_name}: a {shard.count}-way split cuts its {block[shard.dim]}-wide FP8 "
                                  f"scale blocks (local shape {module.out_features}x{module.in_features})")
            out_f, in_f = full_shape((module.out_features, module.in_features), shard)
            gen = torch.Generator(device=dev).manual_seed(_name_seed(seed, f"{mod_name}.weight"))
            # e4m3 codes ~ N(0, 32^2) (max 448), scale_inv ~ fan_in^-0.5 / 32 with +-10% per block
            q = (torch.randn(out_f, in_f, generator=gen, device=dev, dtype=torch.bfloat16) * 32).clamp_(-448, 448)
            s = (1 + 0.1 * (torch.rand(scale_shape((out_f, in_f), block), generator=gen, device=dev) * 2 - 1))
            s = s * (in_f ** -0.5 / 32)
            if shard is not None:
                s = _local_part(s, shard, (out_f, in_f)[shard.dim], block[shard.dim])
            module.set_fp8(_local_part(q.to(FP8_DTYPE), shard), s)
            continue
        for p_name, p in list(module.named_parameters(recurse=False)):
            is_split = isinstance(module, (VocabParallelEmbedding, VocabParallelHead))
            shape = full_shape(tuple(p.shape), shard if is_split else None)
            gen = torch.Generator(device=dev).manual_seed(_name_seed(seed, f"{mod_name}.{p_name}"))
            t = torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32)
            if isinstance(module, Router):
                t = t * (0.1 if p_name == "e_score_correction_bias" else shape[-1] ** -0.5)
            elif p_name == "weight" and "norm" in mod_name:
                t = 1.0 + 0.1 * t
            elif not isinstance(module, VocabParallelEmbedding):  # output heads and any other dense [out, in]
                t = t * shape[-1] ** -0.5
            t = _local_part(t, shard if is_split else None)
            setattr(module, p_name, nn.Parameter(t.to(torch.float32 if isinstance(module, Router) else dtype),
                                                 requires_grad=False))
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"random_fp8_model left '{left[0]}' unset")
    return model.eval()
