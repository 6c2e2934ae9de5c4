"""Decoupled rotary position embedding of MLA (DeepSeek-V2 §2.1.3) with YaRN context extension
(YaRN paper §3.2 "NTK-by-parts" frequency blending and §3.4 attention temperature; DeepSeek-V3 §4.3).

Only the ``qk_rope_head_dim`` slice of queries and the single shared ``k_pe`` head are rotated.
Pairs are interleaved ``(x0,x1),(x2,x3)...`` when ``rope_interleave`` (how DeepSeek's weights are
laid out) or split in halves ``(x_i, x_{i+d/2})`` otherwise; the rotated output keeps the input
layout, so queries and cached keys always agree.
"""

from __future__ import annotations

import math

import torch

from dseval.engine.model.config import ModelConfig
from dseval.engine.model.yarn import RopeScaling, yarn_mscale


def _yarn_inv_freq(dim: int, base: float, rs: RopeScaling) -> torch.Tensor:
    """Blend interpolated (÷factor) and original frequencies with YaRN's linear ramp over the
    dimensions whose wavelength falls between beta_fast and beta_slow rotations of the original
    context; high-frequency dims keep extrapolating, low-frequency dims are interpolated."""

    def correction_dim(num_rotations: float) -> float:
        wavelengths = rs.original_max_position_embeddings / (num_rotations * 2 * math.pi)
        return dim * math.log(wavelengths) / (2 * math.log(base))

    low = max(math.floor(correction_dim(rs.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rs.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (rs.factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1 = keep original frequency (extrapolate), 0 = fully interpolated
    return interpolated * (1 - keep) + extrapolated * keep


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [qk_rope_head_dim // 2] (float32) as ``rope_scaling`` prescribes."""
    dim = config.qk_rope_head_dim
    if config.rope_scaling is None:
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim))
    return _yarn_inv_freq(dim, config.rope_theta, config.rope_scaling)


def rope_cos_sin_factor(config: ModelConfig) -> float:
    """Scale applied to cos/sin: YaRN mscale(factor, mscale) / mscale(factor, mscale_all_dim),
    or the explicit ``attention_factor``. 1 for V3 (mscale == mscale_all_dim)."""
    rs = config.rope_scaling
    if rs is None:
        return 1.0
    if rs.attention_factor is not None:
        return rs.attention_factor
    return yarn_mscale(rs.factor, rs.mscale) / yarn_mscale(rs.factor, rs.mscale_all_dim)


def softmax_scale(config: ModelConfig) -> float:
    """qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN (DeepSeek-V2's fix that
    keeps the attention entropy of extended contexts); V3: 192^-0.5·(0.1·ln40+1)^2 ≈ 0.13523."""
    scale = config.qk_head_dim ** -0.5
    rs = config.rope_scaling
    if rs is not None and rs.mscale_all_dim:
        m = yarn_mscale(rs.factor, rs.mscale_all_dim)
        scale *= m * m
    return scale


class RotaryEmbedding:
    """Precomputed cos/sin tables per device, grown on demand; not an nn.Module so it survives
    meta-device model construction (nothing to load from a checkpoint)."""

    def __init__(self, config: ModelConfig) -> None:
        self.inv_freq = rope_inv_freq(config)
        self.factor = rope_cos_sin_factor(config)
        self.interleave = config.rope_interleave
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        #: Devices whose table was reserved for every position the engine can reach: lookups
        #: there skip the host-side length check (a sync that CUDA-graph capture forbids).
        self._reserved: set[torch.device] = set()

    def reserve(self, max_positions: int, device: torch.device) -> None:
        """Build the tables for positions ``[0, max_positions)`` now and trust callers to stay
        inside them (the model runner guarantees it through ``max_model_len``)."""
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:  # tensors report "cuda:N", never bare "cuda"
            dev = torch.device("cuda", torch.cuda.current_device())
        self._table(max_positions, dev)
        self._reserved.add(dev)

    def _table(self, needed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._tables.get(device)
        if cached is None or cached[0].shape[0] < needed:
            n = max(needed, 4096 if cached is None else 2 * cached[0].shape[0])
            freqs = torch.arange(n, dtype=torch.float32, device="cpu")[:, None] * self.inv_freq[None, :]  # [n, d/2]
            cached = ((freqs.cos() * self.factor).to(device), (freqs.sin() * self.factor).to(device))
            self._tables[device] = cached
        return cached

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole cos, sin tables [n, d/2] (float32) on ``positions``' device, n > max(positions)."""
        if positions.device in self._reserved:
            return self._tables[positions.device]
        needed = int(positions.max().item()) + 1 if positions.numel() else 1
        return self._table(needed, positions.device)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [T, d/2] (float32) for integer positions [T]."""
        cos, sin = self.tables(positions)
        return cos[positions], sin[positions]

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x [T, ..., d] by per-token cos/sin [T, d/2]; computed in float32."""
        dtype = x.dtype
        xf = x.float()
        shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[1],)
        c, s = cos.view(shape), sin.view(shape)  # [T, 1.., d/2] broadcast over heads
        if self.interleave:
            pairs = xf.unflatten(-1, (-1, 2))  # [T, ..., d/2, 2]
            x1, x2 = pairs[..., 0], pairs[..., 1]
            out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)  # back to [T, ..., d]
        else:
            x1, x2 = xf.chunk(2, dim=-1)
            out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        return out.to(dtype)
