"""Deterministic random weights for a :class:`ModelConfig` (presets and tests; no paper section).

Scales keep activations O(1) through a few layers (linear weights ~ N(0, 1/fan_in), norm
weights near 1, embeddings ~ N(0, 1)) so logits and routing decisions are well separated and a
tiny model's greedy output is stable against fp32 rounding differences between implementations.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


def random_state_dict(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Checkpoint-named float32 tensors for every parameter the model needs, from ``seed``."""
    from .checkpoint import expected_tensors
    from .model import DeepseekV3ForCausalLM

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
