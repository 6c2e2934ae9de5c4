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

Backends (``set_prefill_backend``; the engine's ``EngineConfig.prefill_attention``):
* ``auto`` (default): ``split_cudnn``, falling back to ``causal_bias`` for good if cuDNN
  attention refuses the call (older cuDNN, other GPUs);
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

import torch
import torch.nn.functional as F

__all__ = ["PREFILL_BACKENDS", "mla_prefill_attention", "mla_prefill_attention_torch", "set_prefill_backend"]

PREFILL_BACKENDS = ("auto", "causal_bias", "split_flash", "split_cudnn", "fp8")
_backend = "auto"
#: Whether cuDNN accepted v with its own head size (None: not tried yet; False: pad v).
_cudnn_v_unpadded: bool | None = None


def set_prefill_backend(name: str) -> None:
    """Choose the CUDA attention of :func:`mla_prefill_attention` (see the module docstring)."""
    global _backend
    if name not in PREFILL_BACKENDS:
        raise ValueError(f"prefill attention backend must be one of {PREFILL_BACKENDS}, got {name!r}")
    _backend = name


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
    v: torch.Tensor, sm_scale: float,
) -> torch.Tensor:
    """Causal attention of the last ``t`` positions over all ``S``: see the module docstring."""
    if not (q_nope.is_cuda and q_nope.dtype in (torch.bfloat16, torch.float16)):
        return mla_prefill_attention_torch(q_nope, q_pe, k_nope, k_pe, v, sm_scale)
    from torch.nn.attention.bias import causal_lower_right

    global _backend, _cudnn_v_unpadded
    if _backend == "fp8":
        from .mla_prefill_fp8 import mla_prefill_attention_fp8

        return mla_prefill_attention_fp8(q_nope, q_pe, k_nope, k_pe, v, sm_scale).to(q_nope.dtype)
    t, h, nope = q_nope.shape
    s, v_dim = k_nope.shape[0], v.shape[-1]
    rope = q_pe.shape[-1]
    dtype = q_nope.dtype
    q = torch.cat([q_nope, q_pe.to(dtype)], dim=-1).transpose(0, 1)[None]  # [1, H, t, D]
    k = torch.cat([k_nope, k_pe.to(dtype)[:, None, :].expand(s, h, rope)], dim=-1).transpose(0, 1)[None]  # [1, H, S, D]
    if _backend in ("auto", "split_cudnn") and _cudnn_v_unpadded is not False:
        # cuDNN takes a value head size other than the key's: no padding copy, 1/3 fewer PV FLOPs
        try:
            out = _split_attention(q, k, v.to(dtype).transpose(0, 1)[None], sm_scale, "split_cudnn")
            _cudnn_v_unpadded = True
            return out[0].transpose(0, 1)  # [t, H, v_dim]
        except RuntimeError:
            _cudnn_v_unpadded = False
    vp = F.pad(v.to(dtype), (0, nope + rope - v_dim)).transpose(0, 1)[None]  # [1, H, S, D]
    out = None
    if _backend == "auto":
        try:
            out = _split_attention(q, k, vp, sm_scale, "split_cudnn")
        except RuntimeError:  # cuDNN attention unavailable for these inputs: use FlashAttention-2 from now on
            _backend = "causal_bias"
    elif _backend != "causal_bias":
        out = _split_attention(q, k, vp, sm_scale, _backend)
    if out is None:
        mask = causal_lower_right(t, s)
        out = F.scaled_dot_product_attention(q, k, vp, attn_mask=mask, scale=sm_scale)  # [1, H, t, D]
    return out[0, :, :, :v_dim].transpose(0, 1)  # [t, H, v_dim] (strided view)
