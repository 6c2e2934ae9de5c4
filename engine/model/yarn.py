"""YaRN context extension parameters (the ``rope_scaling`` of config.json; DeepSeek-V2 Appendix,
YaRN paper §3.2-§3.4). Their own module because both the config (which parses them) and the
rotary embedding (which applies them) need them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RopeScaling:
    """YaRN parameters (``rope_scaling`` of config.json); ``None`` in ModelConfig means plain RoPE."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    # mscale scales cos/sin (numerator) and mscale_all_dim the softmax scale (squared); the
    # DeepSeek convention: absent mscale means 1, absent mscale_all_dim means 0 (= no correction).
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None  # explicit cos/sin factor; overrides the mscale ratio
    type: str = "yarn"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "factor": self.factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "beta_fast": self.beta_fast,
            "beta_slow": self.beta_slow,
            "mscale": self.mscale,
            "mscale_all_dim": self.mscale_all_dim,
        }
        if self.attention_factor is not None:
            d["attention_factor"] = self.attention_factor
        return d


#: DeepSeek-V3's rope_scaling (config.json of the release).
V3_YARN = RopeScaling(factor=40.0, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                      mscale=1.0, mscale_all_dim=1.0)


def yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN's attention temperature 0.1·mscale·ln(factor) + 1 (1 when not extending)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0
