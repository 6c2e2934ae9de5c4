"""DeepSeekMoE routing (V3 §2.1.2, V2 §2.2.3) from router logits to (weights, expert ids) in one launch.

The PyTorch form of group-limited top-k (``engine.model.moe.Router``) is a chain of ~15 small kernels
(sigmoid, bias add, per-group top-2, group top-k, scatter, mask, expert top-k, gather, normalize,
scale); at decode batch sizes each costs more to launch than to run. Here one program per token
keeps its E scores in registers and does the whole selection: group scores (sum of the top two
choice scores for ``noaux_tc``, the best one for ``group_limited_greedy``), the ``topk_group``
best groups by repeated argmax, then the k best experts among them, likewise. Weights are the
unbiased scores of the chosen experts (the correction bias only steers the choice), normalized
to sum 1 when asked, times ``routed_scaling_factor``; experts come out in descending choice
score, as ``torch.topk`` orders them.

Needs E, E / n_group and k to be powers of two (V3: 256, 32, 8); other shapes use the torch path.
"""

from __future__ import annotations

import torch

from .fp8_quant import HAS_TRITON, triton_available_for

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["group_topk", "group_topk_supported"]


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def group_topk_supported(n_experts: int, n_group: int, top_k: int) -> bool:
    """Whether :func:`group_topk` takes this shape (the kernel's register layout)."""
    return _pow2(n_experts) and _pow2(top_k) and n_experts % n_group == 0 and _pow2(n_experts // n_group)


if HAS_TRITON:

    @triton.jit
    def _group_topk_kernel(
        logits_ptr, bias_ptr, w_ptr, ids_ptr, stride_t, scaling,
        E: tl.constexpr, G: tl.constexpr, TOPK_GROUP: tl.constexpr, K: tl.constexpr,
        SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, GROUP_TOP2: tl.constexpr, NORM: tl.constexpr,
    ):
        t = tl.program_id(0)
        e = tl.arange(0, E)
        x = tl.load(logits_ptr + t * stride_t + e).to(tl.float32)
        if SIGMOID:
            s = tl.sigmoid(x)
        else:
            z = tl.exp(x - tl.max(x, axis=0))
            s = z / tl.sum(z, axis=0)
        choice = s
        if HAS_BIAS:
            choice = s + tl.load(bias_ptr + e).to(tl.float32)
        if G > 1:
            grouped = tl.reshape(choice, (G, E // G))
            best = tl.max(grouped, axis=1)  # [G]
            if GROUP_TOP2:
                col = tl.arange(0, E // G)[None, :]
                first = tl.argmax(grouped, axis=1)  # the max's index; the rest may tie it
                score = best + tl.max(tl.where(col == first[:, None], float("-inf"), grouped), axis=1)
            else:
                score = best
            g = tl.arange(0, G)
            keep = g < 0  # all False
            for _ in tl.static_range(TOPK_GROUP):
                j = tl.argmax(score, axis=0)
                keep = keep | (g == j)
                score = tl.where(g == j, float("-inf"), score)
            keep_e = tl.reshape(tl.broadcast_to(keep[:, None], (G, E // G)), (E,))
            choice = tl.where(keep_e, choice, float("-inf"))
        kk = tl.arange(0, K)
        weights = tl.zeros([K], dtype=tl.float32)
        ids = tl.zeros([K], dtype=tl.int64)
        for k in tl.static_range(K):
            j = tl.argmax(choice, axis=0)
            weights = tl.where(kk == k, tl.sum(tl.where(e == j, s, 0.0), axis=0), weights)
            ids = tl.where(kk == k, j.to(tl.int64), ids)
            choice = tl.where(e == j, float("-inf"), choice)
        if NORM:
            weights = weights / (tl.sum(weights, axis=0) + 1e-20)
        tl.store(w_ptr + t * K + kk, weights * scaling)
        tl.store(ids_ptr + t * K + kk, ids)


def group_topk(logits: torch.Tensor, bias: torch.Tensor | None, *, top_k: int, n_group: int, topk_group: int,
               sigmoid: bool, group_top2: bool, normalize: bool,
               scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] (float32) -> (weights float32 [T, k], expert ids int64 [T, k]).

    ``n_group`` 1 means plain top-k; ``group_top2`` scores a group by its two best choice
    scores (``noaux_tc``) rather than its best (``group_limited_greedy``). Requires a Triton
    device (CUDA, or CPU under ``TRITON_INTERPRET=1``) and :func:`group_topk_supported`.
    """
    T, E = logits.shape
    if not (triton_available_for(logits) and group_topk_supported(E, n_group, top_k)):
        raise ValueError(f"group_topk needs a Triton device and powers of two for experts, experts per group "
                         f"and top_k; got E={E}, n_group={n_group}, top_k={top_k} on {logits.device}")
    logits = logits.float().contiguous()
    weights = torch.empty(T, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(T, top_k, dtype=torch.int64, device=logits.device)
    if T:
        _group_topk_kernel[(T,)](
            logits, bias if bias is not None else logits, weights, ids, logits.stride(0), scaling,
            E=E, G=n_group, TOPK_GROUP=topk_group, K=top_k, SIGMOID=sigmoid, HAS_BIAS=bias is not None,
            GROUP_TOP2=group_top2, NORM=normalize, num_warps=4 if E >= 256 else 1,
        )
    return weights, ids
