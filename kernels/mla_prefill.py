"""MLA prefill attention in the expanded form: per-head keys/values up-projected from the latents.

A prefill chunk of ``t`` new tokens attends causally over the sequence's whole cached context
of ``S`` rows (the chunk's own rows are its last ``t``). Why a separate function: the plain
einsum form materialises ``[H, t, S]`` float32 scores, which at a 128K context and a 16K chunk
is ~1 TB; a fused (flash) attention keeps memory at O((t + S) * H * D). So on CUDA this calls
PyTorch's ``scaled_dot_product_attention`` (flash / cuDNN backends, bf16 in, fp32 softmax
inside) with a bottom-right-aligned causal mask; elsewhere it is the float32 reference.

Shapes (one sequence):
    q_nope  [t, H, nope]   q_pe [t, H, rope]   (rope applied)
    k_nope  [S, H, nope]   k_pe [S, rope]      (one shared rotary key per token)
    v       [S, H, v_dim]
    returns [t, H, v_dim] in q_nope's dtype
The flash kernels want one head size for q, k and v, so v is zero-padded to nope + rope and
the padding sliced off the output (zeros add nothing to the weighted sum); cuDNN is first
asked to take v as it is (128 wide), and v is padded only if it refuses.

Backends (the engine's ``EngineConfig.prefill_attention``): the caller names one and passes
it with every call, as a :class:`PrefillAttention`; nothing here is process-wide state.
* ``auto`` (default): :func:`resolve_prefill_attention` runs ``split_cudnn`` once on a small
  problem of the model's head sizes when the engine starts, and chooses ``causal_bias``
  if cuDNN attention refuses it (older cuDNN, other GPUs);
* ``causal_bias``: one SDPA call with ``causal_lower_right`` (FlashAttention-2);
* ``split_flash`` / ``split_cudnn``: the chunk attends to the older context without a mask and
  to itself with an ordinary (square) causal mask, two calls merged through their log-sum-exp;
  this lets the cuDNN kernels (which only know top-left causal masks) run it. On the H200 at
  a 16K chunk over 128K context: causal_bias 256 TFLOP/s, split_flash 271, split_cudnn 588
  (results/bench/engine_w3.json, ``prefill_attention``);
* ``fp8``: :mod:`.mla_prefill_fp8`, one Triton kernel with e4m3 dots (twice the tensor-core
  rate, e4m3 rounding of Q, K, V and the probabilities; 735 TFLOP/s at that shape); opt-in,
  never chosen by ``auto``. CUDA only: elsewhere the float32 reference runs as for the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

__all__ = ["PREFILL_BACKENDS", "PrefillAttention", "mla_prefill_attention", "mla_prefill_attention_torch",
           "resolve_prefill_attention"]

PREFILL_BACKENDS = ("auto", "causal_bias", "split_flash", "split_cudnn", "fp8")


@dataclass(frozen=True)
class PrefillAttention:
    """A resolved CUDA prefill attention: the backend (never ``auto``) and, for ``split_cudnn``,
    whether v must be zero-padded to the key's head size (cuDNN builds that refuse unequal sizes)."""

    backend: str = "causal_bias"
    pad_v: bool = True

    def __post_init__(self) -> None:
        if self.backend not in PREFILL_BACKENDS[1:]:
            raise ValueError(f"prefill attention backend must be one of {PREFILL_BACKENDS[1:]}, got {self.backend!r}")


def resolve_prefill_attention(name: str, device: torch.device, dtype: torch.dtype, nope: int, rope: int,
                              v_dim: int) -> PrefillAttention:
    """The backend ``name`` stands for on ``device``, decided once before serving.

    ``auto`` and ``split_cudnn`` run :func:`mla_prefill_attention` with cuDNN on a small problem
    of the model's head sizes and ``dtype``: v at its own size if cuDNN takes it (no padding
    copy, a third fewer PV FLOPs), else padded; ``auto`` takes ``causal_bias`` when cuDNN
    refuses both. Off CUDA every backend runs the float32 reference, so nothing is tried.
    """
    if name not in PREFILL_BACKENDS:
        raise ValueError(f"prefill attention backend must be one of {PREFILL_BACKENDS}, got {name!r}")
    if name not in ("auto", "split_cudnn"):
        return PrefillAttention(name)
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return PrefillAttention("split_cudnn" if name == "split_cudnn" else "causal_bias")
    t, s, h = 64, 128, 2  # t < s: both halves of the split (unmasked and square causal) run
    probe = [torch.zeros(*shape, device=device, dtype=dtype)
             for shape in ((t, h, nope), (t, h, rope), (s, h, nope), (s, rope), (s, h, v_dim))]
    for pad_v in (False, True):
        try:
            mla_prefill_attention(*probe, 1.0, PrefillAttention("split_cudnn", pad_v=pad_v))
            return PrefillAttention("split_cudnn", pad_v=pad_v)
        except RuntimeError:
            continue
    return PrefillAttention("split_cudnn") if name == "split_cudnn" else PrefillAttention("causal_bias")


def _sdpa_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
              backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention call [1, H, L, D] -> (out [1, H, L, Dv], natural-log LSE [1, H, L] float32)."""
    if backend == "split_cudnn":
        res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    else:
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
    out, lse = res[0], res[1]
    return out, lse.reshape(q.shape[0], q.shape[1], q.shape[2]).float()


def _split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    """Bottom-right causal attention of q [1, H, t, D] over k/v [1, H, S, D] as an unmasked
    part (keys before the chunk) and a square causal part, merged by log-sum-exp."""
    t, s = q.shape[2], k.shape[2]
    if s == t:
        return _sdpa_lse(q, k, v, True, scale, backend)[0]
    o1, l1 = _sdpa_lse(q, k[:, :, : s - t], v[:, :, : s - t], False, scale, backend)
    o2, l2 = _sdpa_lse(q, k[:, :, s - t :], v[:, :, s - t :], True, scale, backend)
    m = torch.maximum(l1, l2)
    w1, w2 = (l1 - m).exp_(), (l2 - m).exp_()
    inv = 1.0 / (w1 + w2)
    return (o1.float() * (w1 * inv)[..., None] + o2.float() * (w2 * inv)[..., None]).to(q.dtype)


def mla_prefill_attention_torch(
    q_nope: torch.Tensor, q_pe: torch.Tensor, k_nope: torch.Tensor, k_pe: torch.Tensor,
    v: torch.Tensor, sm_scale: float,
) -> torch.Tensor:
    """float32 reference: explicit scores and mask (the engine's original CPU math)."""
    t, s = q_nope.shape[0], k_nope.shape[0]
    q_pos = torch.arange(s - t, s, device=q_nope.device)
    mask = torch.arange(s, device=q_nope.device)[None, :] > q_pos[:, None]  # [t, S] True = future
    scores = torch.einsum("thd,shd->hts", q_nope.float(), k_nope.float())  # [H, t, S]
    scores = scores + torch.einsum("thr,sr->hts", q_pe.float(), k_pe.float())  # shared rope key
    scores = (scores * sm_scale).masked_fill(mask[None], float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("hts,shv->thv", probs, v.float()).to(q_nope.dtype)


def mla_prefill_attention(
    q_nope: torch.Tensor, q_pe: torch.Tensor, k_nope: torch.Tensor, k_pe: torch.Tensor,
    v: torch.Tensor, sm_scale: float, attention: PrefillAttention = PrefillAttention(),  # noqa: B008 (frozen)
) -> torch.Tensor:
    """Causal attention of the last ``t`` positions over all ``S`` with the CUDA ``attention``
    (see the module docstring); the float32 reference off CUDA or outside bf16/fp16."""
    if not (q_nope.is_cuda and q_nope.dtype in (torch.bfloat16, torch.float16)):
        return mla_prefill_attention_torch(q_nope, q_pe, k_nope, k_pe, v, sm_scale)
    if attention.backend == "fp8":
        from .mla_prefill_fp8 import mla_prefill_attention_fp8

        return mla_prefill_attention_fp8(q_nope, q_pe, k_nope, k_pe, v, sm_scale).to(q_nope.dtype)
    t, h, nope = q_nope.shape
    s, v_dim = k_nope.shape[0], v.shape[-1]
    rope = q_pe.shape[-1]
    dtype = q_nope.dtype
    q = torch.cat([q_nope, q_pe.to(dtype)], dim=-1).transpose(0, 1)[None]  # [1, H, t, D]
    k = torch.cat([k_nope, k_pe.to(dtype)[:, None, :].expand(s, h, rope)], dim=-1).transpose(0, 1)[None]  # [1, H, S, D]
    if attention.backend == "split_cudnn" and not attention.pad_v:
        out = _split_attention(q, k, v.to(dtype).transpose(0, 1)[None], sm_scale, "split_cudnn")
        return out[0].transpose(0, 1)  # [t, H, v_dim]
    vp = F.pad(v.to(dtype), (0, nope + rope - v_dim)).transpose(0, 1)[None]  # [1, H, S, D]
    if attention.backend == "causal_bias":
        out = F.scaled_dot_product_attention(q, k, vp, attn_mask=causal_lower_right(t, s), scale=sm_scale)
    else:
        out = _split_attention(q, k, vp, sm_scale, attention.backend)  # [1, H, t, D]
    return out[0, :, :, :v_dim].transpose(0, 1)  # [t, H, v_dim] (strided view)
