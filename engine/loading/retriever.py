"""The ``retriever`` preset: a two-layer model in the DeepSeek-V3 layout whose weights are
written down rather than trained, so that ``dseval niah`` has a model that really retrieves.

Why it works (docs/retriever.md has the full recipe and the numbers):

* Tokens are random ±1 codes of ``CODE_DIM`` dims in the embedding's slot E; one more hidden
  dim K holds the same constant for every token, so every embedding has the same norm (RMSNorm is
  a fixed scale) and projections of K give constant queries and keys.
* Layer 0 has three previous-token heads that attend only through the decoupled rotary part
  (q_pe/k_pe, built from K) on the high-frequency dims YaRN leaves unscaled. Head h scores a key
  ``Δ`` positions back with a trigonometric profile that peaks at ``Δ = h+1`` over every distance
  up to ``HORIZON``; its value (the key's code) lands in slot P(h+1). After layer 0 a position
  holds the codes of itself and its three predecessors.
* Layer 1 has one induction head in the non-rotary (nope) dims: the query is the codes of the
  last three tokens, the key the codes of the three tokens before the key's position (P1..P3),
  the value the key's own code, written to slot O; ``lm_head`` reads slot O with the codes.
  At the answer prefix ("... vault is") the only key whose three predecessors match is the
  token after "vault is" in the needle, and copying continues token by token through the code.
* The induction head also carries a rotary profile on the low-frequency dims YaRN interpolates
  (÷ factor): flat within distance ``HORIZON / factor`` of those dims' original frequencies, far
  lower from ``BEYOND`` on. With YaRN every distance up to ``HORIZON`` maps into the flat part;
  without it (the control, ``retriever-plain``) a needle beyond ``BEYOND`` tokens loses to the
  nearby tokens, like a model trained on the original window only.

The compressed caches carry exactly what the heads need: layer 1's ``c_kv`` is [P1, P2, P3, E]
(``kv_lora_rank`` = 4 codes), its query latent [E, P1, P2, K]. MLP and MoE weights are zero.
The MTP module's eh_proj shifts that layout by one token, so its copy of the induction head
drafts the token after next.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dseval.engine.loading.checkpoint_writer import write_checkpoint
from dseval.engine.loading.validation import expected_tensors
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.model import DeepseekV3ForCausalLM
from dseval.engine.model.rope import rope_inv_freq, softmax_scale
from dseval.engine.model.yarn import V3_YARN

CODE_DIM = 64
#: Hidden slots: E (own code), P1..P3 (codes 1..3 back), O (copied code), K (constant).
SLOT_E, SLOT_P, SLOT_O, DIM_K = 0, (64, 128, 192), 256, 320
KAPPA = 8.0  # the constant dim's value; with the code's norm 8 it is half the embedding's energy
CODE_SEED = 2121
LOOKBACK_OFFSETS = (1, 2, 3)
SHIFT_DIMS = tuple(range(0, 11))  # rotary pairs YaRN keeps at the original frequency (beta_fast side)
WINDOW_DIMS = tuple(range(23, 32))  # rotary pairs YaRN fully interpolates (beta_slow side)
HORIZON = 131072
NEAR = 3276  # HORIZON / factor: YaRN maps every distance up to HORIZON into [0, NEAR]
BEYOND = 6144  # distance from which the control's profile is low
WINDOW_FLAT = 0.05  # spread of the window profile inside the window, as a share of its L1 budget
#: Logit budgets under YaRN's softmax scale (the control divides them by mscale^2 ≈ 1.87).
SHIFT_BUDGET = 210.0  # L1 size of the previous-token profiles
WINDOW_BUDGET = 64.0  # L1 size of the window profile
MATCH_GAIN = 11.0  # logit per matched token of the three-token induction match
PAIR_NORM = 4.0  # amplitude of every used k_pe pair

#: (cos, sin) coefficients of the profiles, unit L1 norm (bench/build_retriever.py --derive).
SHIFT_PROFILES: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    1: ((0.15676, 0.053609, 0.025814, 0.036789, 0.051845, 0.046384, 0.032667, 0.048253, 0.051375, 0.064052, 0.054796),
        (0.217696, 0.077837, 0.019653, 0.019114, 0.006578, 0.0, 0.003602, 0.018341, 0.0, 0.014833, 0.0)),
    2: ((-0.103842, -0.00028, 0.007321, 0.028058, 0.046263, 0.039983, 0.033934, 0.045054, 0.050681, 0.057696, 0.061501),
        (0.254872, 0.095851, 0.028888, 0.041762, 0.030546, 0.011968, 0.015148, 0.026782, 0.0, 0.019569, 0.0)),
    3: ((-0.282729, -0.047592, 0.0, 0.013762, 0.038813, 0.030862, 0.025364, 0.038181, 0.044797, 0.057476, 0.075811),
        (0.039426, 0.052773, 0.059535, 0.050245, 0.045087, 0.025382, 0.020795, 0.033724, 0.0, 0.017645, 0.0)),
}
WINDOW_PROFILE: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.0, 0.0, 0.0, 0.0, 0.060148, 0.197891, 0.084947, 0.088596, 0.324372),
    (-0.01549, -0.005794, 0.0, 0.0, 0.156033, 0.0, 0.066729, 0.0, 0.0))


def profile(cos_coef: np.ndarray, sin_coef: np.ndarray, theta: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """S(d) = Σ_i cos_i·cos(θ_i d) + sin_i·sin(θ_i d): the rotary score of a key d positions back."""
    angles = np.outer(np.asarray(dist, dtype=np.float64), theta)  # [n, pairs]
    return np.cos(angles) @ np.asarray(cos_coef) + np.sin(angles) @ np.asarray(sin_coef)


def original_freqs(config: ModelConfig) -> np.ndarray:
    """Per-pair rotary frequencies without YaRN (float64)."""
    return rope_inv_freq(replace(config, rope_scaling=None)).double().numpy()


def _stored_scores(config: ModelConfig, dims: tuple[int, ...], coef: tuple[tuple[float, ...], tuple[float, ...]],
                   budget: float, dist: np.ndarray) -> np.ndarray:
    """Rotary logits of a key ``dist`` back from q_pe/k_pe as stored (built for YaRN, rounded to
    bf16), under ``config``'s frequencies and softmax scale."""
    built = replace(config, rope_scaling=V3_YARN)
    q, k = (t.bfloat16().double().numpy() for t in _rotary_qk(built, dims, coef, budget))
    pairs = [_pair(config, i) for i in dims]
    cos, sin = np.array([q[a] * k[a] for a, _ in pairs]), np.array([-q[b] * k[a] for a, b in pairs])
    return softmax_scale(config) * profile(cos, sin, rope_inv_freq(config).double().numpy()[list(dims)], dist)


def profile_margins(config: ModelConfig) -> dict[str, float]:
    """The stored profiles in logits under ``config`` (YaRN or the control), at every integer
    distance up to ``HORIZON``:

    ``shift_margin``: least gap between a previous-token head's target offset and any other
    distance; ``window_spread``: the induction profile's range over [0, HORIZON] (what a needle
    can lose to a nearer token under YaRN); ``beyond_drop``: how far below the profile's minimum
    on [0, NEAR] its maximum beyond ``BEYOND`` lies (what a needle loses there)."""
    dist = np.arange(HORIZON + 1)
    shift = []
    for offset in LOOKBACK_OFFSETS:
        s = _stored_scores(config, SHIFT_DIMS, SHIFT_PROFILES[offset], SHIFT_BUDGET, dist)
        shift.append(s[offset] - np.delete(s, offset).max())
    w = _stored_scores(config, WINDOW_DIMS, WINDOW_PROFILE, WINDOW_BUDGET, dist)
    return {"shift_margin": float(min(shift)), "window_spread": float(w.max() - w.min()),
            "beyond_drop": float(w[:NEAR].min() - w[BEYOND:].max())}


def _codes(vocab: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(CODE_SEED)
    return torch.randint(0, 2, (vocab, CODE_DIM), generator=gen).float() * 2 - 1  # [V, D] of ±1


def _pair(config: ModelConfig, i: int) -> tuple[int, int]:
    """Indices of rotary pair i inside a q_pe/k_pe vector, in the model's layout."""
    half = config.qk_rope_head_dim // 2
    return (2 * i, 2 * i + 1) if config.rope_interleave else (i, i + half)


def _rotary_qk(config: ModelConfig, dims: tuple[int, ...], coef: tuple[tuple[float, ...], tuple[float, ...]],
               budget: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q_pe, k_pe [rope] whose rotated product, times the softmax scale, is budget·S(t - j).

    With k = (p, 0) at position j and q = (u, v) at t, the rotated dot product is
    p·(u cos θ(t-j) - v sin θ(t-j)), so u = cos_coef·budget/(p·scale), v = -sin_coef·budget/(p·scale).
    """
    scale = softmax_scale(config)
    q, k = torch.zeros(config.qk_rope_head_dim), torch.zeros(config.qk_rope_head_dim)
    for i, c, s in zip(dims, *coef, strict=True):
        a, b = _pair(config, i)
        k[a] = PAIR_NORM
        q[a], q[b] = c * budget / (PAIR_NORM * scale), -s * budget / (PAIR_NORM * scale)
    return q, k


def _rms(h_energy: float, hidden: int) -> float:
    return (h_energy / hidden) ** 0.5


def _previous_token_heads(sd: dict[str, torch.Tensor], config: ModelConfig, p: str) -> None:
    """Heads 0-2 of attention ``p``: rotary-only lookback by LOOKBACK_OFFSETS into slots P1..P3.
    Normalized input: codes/r0 in E and K = KAPPA/r0."""
    D, Q, C, v = CODE_DIM, config.q_lora_rank, config.kv_lora_rank, config.v_head_dim
    qk_rows, kv_rows = config.qk_head_dim, config.qk_nope_head_dim + v  # rows per head in q_b / kv_b
    eye, r0 = torch.eye(D), _rms(D + KAPPA ** 2, config.hidden_size)
    sd[p + "q_a_proj.weight"][0, DIM_K] = 1.0  # latent = (KAPPA/r0)·e0, normalized to sqrt(Q)·e0
    sd[p + "kv_a_proj_with_mqa.weight"][:D, SLOT_E:SLOT_E + D] = eye  # c_kv = [code/r0, 0...]
    sd[p + "kv_a_layernorm.weight"][:D] = (D / C) ** 0.5  # undo the norm's 1/sqrt(share): c_kv = code
    for h, offset in enumerate(LOOKBACK_OFFSETS):
        q_pe, k_pe = _rotary_qk(config, SHIFT_DIMS, SHIFT_PROFILES[offset], SHIFT_BUDGET)
        sd[p + "q_b_proj.weight"][h * qk_rows + config.qk_nope_head_dim:(h + 1) * qk_rows, 0] = q_pe / Q ** 0.5
        nope = h * kv_rows + config.qk_nope_head_dim
        sd[p + "kv_b_proj.weight"][nope:nope + D, :D] = eye  # v = code
        sd[p + "o_proj.weight"][SLOT_P[h]:SLOT_P[h] + D, h * v:h * v + D] = eye
    sd[p + "kv_a_proj_with_mqa.weight"][C:, DIM_K] = k_pe / (KAPPA / r0)  # k_pe is shared by all heads


def _induction_head(sd: dict[str, torch.Tensor], config: ModelConfig, p: str) -> None:
    """Head 0 of attention ``p``: three-token match [E, P1, P2] · [P1, P2, P3] plus the window
    profile, value E into slot O. Normalized input: codes/r1 in E, P1..P3 and K = KAPPA/r1."""
    D, Q, C, nope = CODE_DIM, config.q_lora_rank, config.kv_lora_rank, config.qk_nope_head_dim
    eye, r1 = torch.eye(D), _rms(4 * CODE_DIM + KAPPA ** 2, config.hidden_size)
    for j, slot in enumerate((SLOT_E, SLOT_P[0], SLOT_P[1])):  # query latent [E, P1, P2, K]
        sd[p + "q_a_proj.weight"][j * D:(j + 1) * D, slot:slot + D] = eye
    sd[p + "q_a_proj.weight"][3 * D, DIM_K] = 1.0
    sd[p + "q_a_layernorm.weight"][:] = ((3 * D + KAPPA ** 2) / Q) ** 0.5  # latent = [codes, KAPPA]
    for j, slot in enumerate((*SLOT_P, SLOT_E)):  # c_kv = [P1, P2, P3, E], already unit RMS
        sd[p + "kv_a_proj_with_mqa.weight"][j * D:(j + 1) * D, slot:slot + D] = eye
    gain = MATCH_GAIN / (D * softmax_scale(config))
    sd[p + "q_b_proj.weight"][:3 * D, :3 * D] = gain * torch.eye(3 * D)  # q_nope = gain·[E, P1, P2]
    q_pe, k_pe = _rotary_qk(config, WINDOW_DIMS, WINDOW_PROFILE, WINDOW_BUDGET)
    sd[p + "q_b_proj.weight"][nope:config.qk_head_dim, 3 * D] = q_pe / KAPPA
    sd[p + "kv_a_proj_with_mqa.weight"][C:, DIM_K] = k_pe / (KAPPA / r1)
    sd[p + "kv_b_proj.weight"][:3 * D, :3 * D] = torch.eye(3 * D)  # k_nope = [P1, P2, P3]
    sd[p + "kv_b_proj.weight"][nope:nope + D, 3 * D:4 * D] = eye  # v = E
    sd[p + "o_proj.weight"][SLOT_O:SLOT_O + D, :D] = eye


def _mtp_combine(sd: dict[str, torch.Tensor], config: ModelConfig, p: str) -> None:
    """eh_proj of MTP module ``p``: from [enorm(emb(next)), hnorm(h)] build the layout layer 1
    reads, shifted one token: E = next token, P1..P3 = the main model's E, P1, P2, K. The MTP
    block's induction head then predicts the token after next (DeepSeek-V3 §2.2)."""
    D, H = CODE_DIM, config.hidden_size
    r0, rh = _rms(D + KAPPA ** 2, H), _rms(5 * D + KAPPA ** 2, H)  # rh: h with a full code in O
    w = sd[p + "eh_proj.weight"]  # [H, 2H]
    w[SLOT_E:SLOT_E + D, SLOT_E:SLOT_E + D] = r0 * torch.eye(D)
    w[DIM_K, DIM_K] = r0
    for dst, src in zip(SLOT_P, (SLOT_E, SLOT_P[0], SLOT_P[1]), strict=True):
        w[dst:dst + D, H + src:H + src + D] = rh * torch.eye(D)


def retriever_state_dict(config: ModelConfig) -> dict[str, torch.Tensor]:
    """Checkpoint-named float32 tensors of the construction in the module docstring."""
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(config)
    sd = {n: (torch.ones if n.endswith("norm.weight") else torch.zeros)(e.shape)
          for n, e in expected_tensors(model).items()}
    codes = _codes(config.vocab_size)
    sd["model.embed_tokens.weight"][:, SLOT_E:SLOT_E + CODE_DIM] = codes
    sd["model.embed_tokens.weight"][:, DIM_K] = KAPPA
    sd["lm_head.weight"][:, SLOT_O:SLOT_O + CODE_DIM] = codes
    _previous_token_heads(sd, config, "model.layers.0.self_attn.")
    _induction_head(sd, config, "model.layers.1.self_attn.")
    for depth in range(config.num_nextn_predict_layers):
        p = f"model.layers.{config.num_hidden_layers + depth}."
        sd[p + "embed_tokens.weight"] = sd["model.embed_tokens.weight"]  # the same tables, written twice
        sd[p + "shared_head.head.weight"] = sd["lm_head.weight"]
        _mtp_combine(sd, config, p)
        _induction_head(sd, config, p + "self_attn.")
    return sd


def write_retriever(out_dir: str | Path, config: ModelConfig, *, plain: bool = False) -> Path:
    """Write the checkpoint folder of the weights built for ``config`` (the preset's, with YaRN);
    ``plain`` drops rope_scaling from its config.json (the control), same tensors."""
    state = retriever_state_dict(config)
    return write_checkpoint(out_dir, replace(config, rope_scaling=None) if plain else config, state, num_shards=2)
