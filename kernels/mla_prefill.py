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

Many sequences in one step (:func:`mla_prefill_attention_varlen`): a step that prefills dozens
of short prompts (a loglikelihood task's choices) would pay one or two launches per sequence
and layer, each far too small to fill the GPU; instead every sequence's queries and context
go to one FlashAttention-2 varlen call (``cu_seqlens``; its causal mask is bottom-right
aligned per sequence, which is what a chunk over its cached context needs). Whether the
installed build computes that correctly is checked once, at start, against the reference
(:attr:`PrefillAttention.varlen`); if not, the per-sequence calls run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["PREFILL_BACKENDS", "PrefillAttention", "VarlenLayout", "mla_prefill_attention",
           "mla_prefill_attention_torch", "mla_prefill_attention_varlen", "resolve_prefill_attention"]

PREFILL_BACKENDS = ("auto", "causal_bias", "split_flash", "split_cudnn", "fp8")


@dataclass(frozen=True)
class PrefillAttention:
    """A resolved CUDA prefill attention: the backend (never ``auto``) and, for ``split_cudnn``,
    whether v must be zero-padded to the key's head size (cuDNN builds that refuse unequal sizes)."""

    backend: str = "causal_bias"
    pad_v: bool = True
    #: Steps of several sequences take one varlen call (:func:`mla_prefill_attention_varlen`).
    varlen: bool = False

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
    on_gpu = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
    varlen = name != "fp8" and (not on_gpu or _varlen_agrees(device, dtype, nope, rope, v_dim))
    if name not in ("auto", "split_cudnn"):
        return PrefillAttention(name, varlen=varlen)
    if not on_gpu:
        return PrefillAttention("split_cudnn" if name == "split_cudnn" else "causal_bias", varlen=varlen)
    t, s, h = 64, 128, 2  # t < s: both halves of the split (unmasked and square causal) run
    probe = [torch.zeros(*shape, device=device, dtype=dtype)
             for shape in ((t, h, nope), (t, h, rope), (s, h, nope), (s, rope), (s, h, v_dim))]
    for pad_v in (False, True):
        try:
            mla_prefill_attention(*probe, 1.0, PrefillAttention("split_cudnn", pad_v=pad_v))
            return PrefillAttention("split_cudnn", pad_v=pad_v, varlen=varlen)
        except RuntimeError:
            continue
    return PrefillAttention("split_cudnn" if name == "split_cudnn" else "causal_bias", varlen=varlen)


@dataclass(frozen=True)
class VarlenLayout:
    """Where each of B sequences sits in the packed queries (``cu_q``) and contexts (``cu_k``):
    device int32 offsets for the kernel, the same offsets on the host for the reference."""

    cu_q: torch.Tensor  # [B+1] int32
    cu_k: torch.Tensor  # [B+1] int32
    host_cu_q: tuple[int, ...]
    host_cu_k: tuple[int, ...]

    @classmethod
    def build(cls, new_tokens: list[int], context_lens: list[int], device: torch.device) -> VarlenLayout:
        """From per-sequence new-token and context counts; one host-to-device copy."""
        cu_q, cu_k = [0], [0]
        for t, s in zip(new_tokens, context_lens, strict=True):
            cu_q.append(cu_q[-1] + t)
            cu_k.append(cu_k[-1] + s)
        both = torch.tensor([cu_q, cu_k], dtype=torch.int32).to(device, non_blocking=True)
        return cls(both[0], both[1], tuple(cu_q), tuple(cu_k))

    def spans(self) -> list[tuple[int, int, int, int]]:
        """``(q_start, q_end, k_start, k_end)`` of each sequence."""
        q, k = self.host_cu_q, self.host_cu_k
        return [(q[b], q[b + 1], k[b], k[b + 1]) for b in range(len(q) - 1)]


def mla_prefill_attention_varlen(
    q_nope: torch.Tensor, q_pe: torch.Tensor, k_nope: torch.Tensor, k_pe: torch.Tensor, v: torch.Tensor,
    sm_scale: float, layout: VarlenLayout,
) -> torch.Tensor:
    """:func:`mla_prefill_attention` of B sequences packed along the first dimension (queries
    by ``layout.cu_q``, contexts by ``layout.cu_k``; each sequence's queries are its context's
    last positions) -> [T, H, v_dim]: one FlashAttention-2 varlen call on CUDA in bf16/fp16,
    else the float32 reference per sequence."""
    if not (q_nope.is_cuda and q_nope.dtype in (torch.bfloat16, torch.float16)):
        return torch.cat([mla_prefill_attention_torch(q_nope[a:b], q_pe[a:b], k_nope[c:d], k_pe[c:d], v[c:d], sm_scale)
                          for a, b, c, d in layout.spans()])
    h, nope, rope, v_dim = q_nope.shape[1], q_nope.shape[2], q_pe.shape[-1], v.shape[-1]
    dtype = q_nope.dtype
    q = torch.cat([q_nope, q_pe.to(dtype)], dim=-1)  # [T, H, D]
    k = torch.cat([k_nope, k_pe.to(dtype)[:, None, :].expand(-1, h, rope)], dim=-1)  # [K, H, D]
    vp = F.pad(v.to(dtype), (0, nope + rope - v_dim))  # flash wants one head size
    spans = layout.spans()
    max_q = max(b - a for a, b, _, _ in spans)
    max_k = max(d - c for _, _, c, d in spans)
    out = torch.ops.aten._flash_attention_forward(q, k, vp, layout.cu_q, layout.cu_k, max_q, max_k, 0.0, True, False,
                                                  scale=sm_scale)[0]
    return out[..., :v_dim]


def _varlen_agrees(device: torch.device, dtype: torch.dtype, nope: int, rope: int, v_dim: int) -> bool:
    """Whether this build's varlen kernel runs the model's head sizes and matches the reference
    on two sequences whose chunks are shorter than their contexts (bottom-right causal)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    t, s, h = (3, 5), (7, 5), 2

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    q_nope, q_pe = rand(sum(t), h, nope), rand(sum(t), h, rope)
    k_nope, k_pe, v = rand(sum(s), h, nope), rand(sum(s), rope), rand(sum(s), h, v_dim)
    layout = VarlenLayout.build(list(t), list(s), device)
    try:
        got = mla_prefill_attention_varlen(q_nope, q_pe, k_nope, k_pe, v, 0.1, layout).float()
    except RuntimeError:
        return False
    want = torch.cat([mla_prefill_attention_torch(q_nope[a:b].float(), q_pe[a:b].float(), k_nope[c:d].float(),
                                                  k_pe[c:d].float(), v[c:d].float(), 0.1)
                      for a, b, c, d in layout.spans()])
    return bool(torch.allclose(got, want, atol=3e-2, rtol=3e-2))


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
        # Imported here: the module pulls in torch._dynamo, seconds of every process start
        # that only this fallback backend needs.
        from torch.nn.attention.bias import causal_lower_right

        out = F.scaled_dot_product_attention(q, k, vp, attn_mask=causal_lower_right(t, s), scale=sm_scale)
    else:
        out = _split_attention(q, k, vp, sm_scale, attention.backend)  # [1, H, t, D]
    return out[0, :, :, :v_dim].transpose(0, 1)  # [t, H, v_dim] (strided view)
