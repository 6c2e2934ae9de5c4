"""Feed-forward blocks: the dense SwiGLU MLP and DeepSeekMoE (DeepSeek-V2 §2.2, DeepSeek-V3 §2.1.2).

Routing, per token:
* affinities s = sigmoid(x·Gᵀ) (V3) or softmax(x·Gᵀ) (V2), in float32;
* choice scores = s + e_score_correction_bias (V3's auxiliary-loss-free balancing, §2.1.2: the
  bias only steers *which* experts are chosen, never their weights);
* group-limited routing (V2 §2.2.3 device-limited / V3 node-limited): experts split into n_group
  groups, each scored by its top-2 choice scores summed (``noaux_tc``) or its best one
  (``group_limited_greedy``); only the best topk_group groups stay eligible;
* top-k experts among the eligible; weights = unbiased s of those experts, normalized to sum 1
  when ``norm_topk_prob``, times ``routed_scaling_factor``.
Output = Σ weight·expert(x) + shared_experts(x).

Parallel layouts (see :mod:`dseval.engine.parallel.context`): under plain TP every expert and the shared
experts are sliced like a dense MLP and one all-reduce sums routed + shared partial outputs;
under EP each rank holds whole experts ``[r·E/W, (r+1)·E/W)`` (``experts`` is keyed by the
checkpoint index, so only owned ones exist) and router + shared experts are replicated; how
tokens reach the experts is in :mod:`dseval.engine.parallel.expert_parallel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dseval.engine.model.config import ModelConfig
from dseval.engine.model.linear import ColumnParallelLinear, RowParallelLinear
from dseval.engine.parallel.collectives import all_reduce
from dseval.engine.parallel.context import ParallelContext
from dseval.engine.parallel.expert_parallel import moe_all_to_all
from dseval.engine.parallel.sharding import local_size

_SINGLE = ParallelContext()  # the layout of a replicated module


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) · up(x)). Under TP gate/up keep a block of the
    intermediate features and down the matching columns, so the only communication is the
    all-reduce after down (skipped with ``reduce=False`` when the caller sums first)."""

    def __init__(self, hidden: int, inter: int, block: tuple[int, int] = (128, 128),
                 parallel: ParallelContext = _SINGLE, reduce: bool = True) -> None:
        super().__init__()
        self.gate_proj = ColumnParallelLinear(hidden, inter, block, parallel, "intermediate size")
        self.up_proj = ColumnParallelLinear(hidden, inter, block, parallel, "intermediate size")
        self.down_proj = RowParallelLinear(inter, hidden, block, parallel, "intermediate size", reduce=reduce)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """The ``mlp.gate`` of a MoE layer: weight [E, hidden], optional correction bias [E]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.n_routed_experts is not None
        self.config = config
        e = config.n_routed_experts
        self.weight = nn.Parameter(torch.empty(e, config.hidden_size, dtype=torch.float32), requires_grad=False)
        # Only noaux_tc (V3) checkpoints carry the balancing bias.
        self.e_score_correction_bias: nn.Parameter | None = (
            nn.Parameter(torch.zeros(e, dtype=torch.float32), requires_grad=False)
            if config.topk_method == "noaux_tc" else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> (weights [T, k] float32, expert ids [T, k] int64)."""
        cfg = self.config
        logits = F.linear(x.float(), self.weight.float())  # [T, E]
        use_groups = cfg.topk_method != "greedy" and cfg.n_group > 1
        if logits.is_cuda:  # one kernel instead of ~15 (decode is launch-bound) where the shape allows
            # (imported lazily: CPU runs never load Triton)
            from dseval.kernels.router import group_topk, group_topk_supported

            g = cfg.n_group if use_groups else 1
            if group_topk_supported(logits.shape[1], g, cfg.num_experts_per_tok):
                return group_topk(logits, self.e_score_correction_bias, top_k=cfg.num_experts_per_tok,
                                  n_group=g, topk_group=cfg.topk_group, sigmoid=cfg.scoring_func == "sigmoid",
                                  group_top2=cfg.topk_method == "noaux_tc", normalize=cfg.norm_topk_prob,
                                  scaling=cfg.routed_scaling_factor)
        scores = logits.sigmoid() if cfg.scoring_func == "sigmoid" else logits.softmax(dim=-1)
        choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias.float()
        if use_groups:
            T, E = choice.shape
            grouped = choice.view(T, cfg.n_group, E // cfg.n_group)  # [T, E] -> [T, G, E/G]
            if cfg.topk_method == "noaux_tc":
                group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [T, G]
            else:
                group_score = grouped.amax(dim=-1)
            keep_groups = group_score.topk(cfg.topk_group, dim=-1).indices  # [T, topk_group]
            group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep_groups, True)
            expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(T, E)  # [T, G, E/G] -> [T, E]
            choice = choice.masked_fill(~expert_mask, float("-inf"))
        ids = choice.topk(cfg.num_experts_per_tok, dim=-1).indices  # [T, k]
        weights = scores.gather(1, ids)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * cfg.routed_scaling_factor, ids


class MoE(nn.Module):
    """Routed experts + shared experts; names follow the HF checkpoint (``mlp.experts.E.*``)."""

    def __init__(
        self, config: ModelConfig, parallel: ParallelContext = _SINGLE
    ) -> None:
        super().__init__()
        assert config.n_routed_experts is not None
        self.parallel = parallel
        self.n_experts = config.n_routed_experts
        block = config.quantization.weight_block_size if config.quantization else (128, 128)
        self.gate = Router(config)
        self.top_k = config.num_experts_per_tok
        per_rank = local_size(self.n_experts, parallel.ep_size, "n_routed_experts")
        self.first_expert = parallel.ep_rank * per_rank
        self.experts_per_rank = per_rank
        # Plain TP slices every expert (and the shared ones); EP keeps whole experts, replicated shared.
        sliced = parallel if parallel.tp and not parallel.ep else _SINGLE
        self.experts = nn.ModuleDict({
            str(e): MLP(config.hidden_size, config.moe_intermediate_size, block, sliced, reduce=False)
            for e in range(self.first_expert, self.first_expert + per_rank)
        })
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts, block, sliced,
                reduce=False)
            if config.n_shared_experts > 0 else None
        )

    @property
    def has_shared_experts(self) -> bool:
        return self.shared_experts is not None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> (weights [T, k] float32, expert ids [T, k] int64)."""
        return self.gate(x)

    def expert_rows(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """Row i of ``x`` through expert ``expert_ids[i]`` (all owned by this rank): [n, hidden]."""
        fused = getattr(self, "fused_experts", None)
        if fused is not None:  # one expert per row at weight 1: the stacked kernel does the grouping
            ones = torch.ones(x.shape[0], 1, dtype=torch.float32, device=x.device)
            return fused(x, ones, expert_ids[:, None]).to(x.dtype)
        y = torch.empty_like(x)
        order = expert_ids.argsort(stable=True)
        counts = torch.bincount(expert_ids - self.first_expert, minlength=self.experts_per_rank).tolist()
        start = 0
        for j, n in enumerate(counts):
            if n:
                rows = order[start : start + n]
                y[rows] = self.experts[str(self.first_expert + j)](x[rows])
                start += n
        return y

    def routed(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Σ over this rank's experts of weight·expert(x), float32 [T, hidden]; experts owned
        elsewhere contribute zero here."""
        fused = getattr(self, "fused_experts", None)  # set by engine.model.fused_weights.prepare_fused_moe
        if fused is not None:
            return fused(x, weights, ids)
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
        flat = ids.flatten()  # [T*k] (token, slot) pairs, token-major
        local = ((flat >= self.first_expert) & (flat < self.first_expert + self.experts_per_rank)).nonzero().squeeze(1)
        tok = local // ids.shape[1]
        y = self.expert_rows(x[tok], flat[local])
        return out.index_add_(0, tok, y.float() * weights.flatten()[local, None])

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """The shared experts on ``x``, float32; through the stacked FP8 kernel when it holds
        them, so every layout computes them alike."""
        fused = getattr(self, "fused_experts", None)
        if fused is not None and fused.shared_index is not None:
            return fused.shared(x)
        assert self.shared_experts is not None
        return self.shared_experts(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.parallel
        # Dispatch sizes its buffers from counts read on the host, which a CUDA graph cannot
        # capture: captured decode steps take the (numerically equivalent) all-reduce scheme.
        if p.ep and p.moe_comm == "all_to_all" and not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            return moe_all_to_all(self, x)
        weights, ids = self.gate(x)
        fused = getattr(self, "fused_experts", None)
        if fused is not None and fused.shared_index is not None and fused.covers_all:
            out = fused(x, weights, ids, with_shared=True)  # the shared expert as one more slot
        else:
            out = self.routed(x, weights, ids)
            if p.ep:  # reference scheme: every rank ran its experts over all tokens; sum them (in x's dtype, as it does)
                out = all_reduce(out.to(x.dtype), p).float()
            if self.shared_experts is not None:
                out += self.shared_output(x)
        if p.tp and not p.ep:  # sliced experts: routed + shared partial sums, one reduction
            out = all_reduce(out, p)
        return out.to(x.dtype)
