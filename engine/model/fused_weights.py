"""Stacked routed-expert weights for :func:`dseval.kernels.fused_moe`, prepared once after loading.

Why: the reference :meth:`dseval.engine.model.moe.MoE.routed` loops over experts in Python with a
host sync per step, which a CUDA graph cannot capture and which launches up to 256 small GEMMs.
The fused kernel wants every expert's weights in one tensor, ``w13 [E, 2I, H]`` (gate rows then
up rows) and ``w2 [E, H, I]`` with their 128x128 block scales. Stacking copies each expert
once; the experts' own parameters are then re-pointed at views of the stack, so the model holds
one copy (the checkpoint names, ``mlp.experts.N.gate_proj.weight`` ..., still resolve).

The stack covers the experts this rank holds (``MoE.experts``: all of them, a tensor-parallel
slice of each, or an expert-parallel range); ids outside the range get weight 0 and are sent to
local expert 0, which is correct but wastes that expert's work under expert parallelism.

When the shared expert has a routed expert's shape (V3: one shared expert of 2048) it is
stacked after the routed ones, so every layout computes it with the same FP8 kernel (and the
same activation quantization). When the rank holds every routed expert (no expert
parallelism), every token gets it as one more slot at weight 1: its three GEMMs, activation and
the addition (~10 launches per layer) ride along in the fused kernel's two grouped GEMMs. Under
expert parallelism it runs as its own one-slot call after the ranks' routed outputs are summed
(it is replicated, so it must not be summed across ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dseval.engine.model.linear import Linear
from dseval.engine.model.moe import MLP, MoE


@dataclass
class StackedExperts:
    """One MoE layer's routed experts as the fused kernel takes them."""

    w13: torch.Tensor  # [E, 2I, H] (e4m3 or the dense dtype)
    w13_scale: torch.Tensor | None  # [E, 2I/128, H/128] float32, None for dense weights
    w2: torch.Tensor  # [E, H, I]
    w2_scale: torch.Tensor | None  # [E, H/128, I/128]
    first_expert: int
    #: Routed experts in the stack (rows ``[0, n_routed)``).
    n_routed: int
    #: The stack holds every routed expert (no expert parallelism): ids need no masking.
    covers_all: bool = False
    #: Stack row of the shared expert, when it was stacked after the routed ones.
    shared_index: int | None = None

    def __call__(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                 with_shared: bool = False) -> torch.Tensor:
        """Σ_j weights[t, j]·expert_{ids[t, j]}(x_t) over this rank's experts, plus the shared
        expert at weight 1 when ``with_shared``: float32 [T, hidden]."""
        from dseval.kernels.moe import fused_moe  # lazy: Triton only where the kernel runs

        if with_shared:
            assert self.shared_index is not None and self.covers_all
            t = ids.shape[0]
            ids = torch.cat([ids, ids.new_full((t, 1), self.shared_index)], dim=1)
            weights = torch.cat([weights.float(), weights.new_ones((t, 1), dtype=torch.float32)], dim=1)
        if self.covers_all:  # fewer tiny kernels per decode step
            return fused_moe(x.to(torch.bfloat16), self.w13, self.w13_scale, self.w2, self.w2_scale, ids,
                             weights).float()
        local = ids - self.first_expert
        owned = (local >= 0) & (local < self.n_routed)  # never the shared row
        local = torch.where(owned, local, torch.zeros_like(local))
        w = torch.where(owned, weights.float(), torch.zeros_like(weights, dtype=torch.float32))
        y = fused_moe(x.to(torch.bfloat16), self.w13, self.w13_scale, self.w2, self.w2_scale, local, w)
        return y.float()

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The shared expert alone on every row of ``x``: float32 [T, hidden]."""
        from dseval.kernels.moe import fused_moe

        assert self.shared_index is not None
        t = x.shape[0]
        ids = torch.full((t, 1), self.shared_index, dtype=torch.int64, device=x.device)
        ones = torch.ones(t, 1, dtype=torch.float32, device=x.device)
        return fused_moe(x.to(torch.bfloat16), self.w13, self.w13_scale, self.w2, self.w2_scale, ids, ones).float()


def _point(linear: Linear, weight: torch.Tensor, scale: torch.Tensor | None) -> None:
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if scale is not None:
        linear.weight_scale_inv = nn.Parameter(scale, requires_grad=False)


def _same_shape(a: MLP, b: MLP) -> bool:
    return all(getattr(a, n).weight.shape == getattr(b, n).weight.shape
               and getattr(a, n).weight.dtype == getattr(b, n).weight.dtype
               for n in ("gate_proj", "up_proj", "down_proj"))


def stack_experts(moe: MoE) -> StackedExperts:
    """Copy ``moe``'s experts (and, where it fits, its shared expert) into stacked tensors and
    make the experts views of them."""
    experts: list[MLP] = [moe.experts[k] for k in sorted(moe.experts, key=int)]  # type: ignore[misc]
    n_routed = len(experts)
    shared = moe.shared_experts
    shared_index = None
    if isinstance(shared, MLP) and _same_shape(shared, experts[0]):
        shared_index = n_routed
        experts.append(shared)
    g0 = experts[0].gate_proj
    fp8 = g0.is_fp8
    if fp8 and (g0.block_size != (128, 128) or g0.out_features % 128 or g0.in_features % 128):
        raise ValueError(f"fused FP8 MoE needs 128x128 blocks dividing the expert shapes, got {g0.block_size}, "
                         f"{g0.out_features}x{g0.in_features}")
    w13 = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight], dim=0) for e in experts])  # [E, 2I, H]
    w2 = torch.stack([e.down_proj.weight for e in experts])  # [E, H, I]
    s13 = s2 = None
    if fp8:
        s13 = torch.stack([torch.cat([e.gate_proj.weight_scale_inv, e.up_proj.weight_scale_inv], dim=0)
                           for e in experts]).float().contiguous()
        s2 = torch.stack([e.down_proj.weight_scale_inv for e in experts]).float().contiguous()
    inter = g0.out_features
    for j, e in enumerate(experts):  # free the per-expert copies: the experts now view the stack
        _point(e.gate_proj, w13[j, :inter], s13[j, : inter // 128] if s13 is not None else None)
        _point(e.up_proj, w13[j, inter:], s13[j, inter // 128 :] if s13 is not None else None)
        _point(e.down_proj, w2[j], s2[j] if s2 is not None else None)
    return StackedExperts(w13, s13, w2, s2, moe.first_expert, n_routed, covers_all=n_routed == moe.n_experts,
                          shared_index=shared_index)


def prepare_fused_moe(model: nn.Module) -> int:
    """Attach ``fused_experts`` to every MoE layer of ``model``; returns how many were prepared.
    Only for bf16 activations with FP8 or bf16 experts (the kernel's contract)."""
    n = 0
    for module in model.modules():
        if isinstance(module, MoE) and getattr(module, "fused_experts", None) is None and len(module.experts):
            module.fused_experts = stack_experts(module)
            n += 1
    return n
