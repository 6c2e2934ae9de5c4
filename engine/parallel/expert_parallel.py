"""Expert parallelism with token dispatch: all-to-all to the experts' owners and back.

Every rank of a replica holds the same T tokens when the MoE starts (attention is replicated or
tensor-parallel and all-reduced). Under the reference scheme (``moe_comm="all_reduce"``) each rank
would route all T tokens and run its experts on them, then all-reduce T x hidden. Here each rank
instead takes a 1/W share of the tokens and, per step:

1. routes its share (router replicated) and forms one row per (token, rank owning at least one
   of its experts), grouped by rank, with the experts and routing weights of that rank's slots;
2. exchanges per-peer row counts (one small all-to-all), then the rows, experts and weights;
3. runs each received row through its slots' experts, weights and sums them per row, and sends
   one row back per row received;
4. sums the returned rows per token, adds the (replicated) shared experts for its share, and
   all-gathers the shares so every rank again holds all T outputs.

A token crosses to a rank once however many of its experts live there, so with V3's node-limited
routing (4 of 8 expert groups, which are ranks under EP8) it is sent at most 4 times instead of
8. Each rank runs router and shared experts on ~T/W tokens instead of T.
"""

from __future__ import annotations

from typing import Protocol

import torch

from dseval.engine.parallel.collectives import all_gather_rows, all_to_all_rows, exchange_counts
from dseval.engine.parallel.context import ParallelContext


class ExpertLayer(Protocol):
    """What dispatch needs of a MoE layer (:class:`dseval.engine.model.moe.MoE` is one): its
    layout, how many experts each rank holds, the router, and its experts and shared experts."""

    parallel: ParallelContext
    experts_per_rank: int
    top_k: int

    @property
    def has_shared_experts(self) -> bool: ...

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [t, hidden] -> (weights [t, k] float32, expert ids [t, k])."""
        ...

    def expert_rows(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """Row i of ``x`` through expert ``expert_ids[i]`` (owned by this rank)."""
        ...

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """The shared experts on ``x``, float32."""
        ...


def token_shares(num_tokens: int, world: int) -> list[int]:
    """Rows per rank: contiguous, sizes differ by at most one (rank order)."""
    base, extra = divmod(num_tokens, world)
    return [base + (r < extra) for r in range(world)]


def moe_all_to_all(moe: ExpertLayer, x: torch.Tensor) -> torch.Tensor:
    """The MoE layer's output for all of ``x`` [T, hidden], computed with token dispatch."""
    ctx = moe.parallel
    shares = token_shares(x.shape[0], ctx.world_size)
    start = sum(shares[: ctx.rank])
    xl = x[start : start + shares[ctx.rank]]  # this rank's share of the tokens
    t, k = xl.shape[0], moe.top_k
    weights, ids = moe.route(xl)  # [t, k]
    # One row per (token, destination rank), grouped by destination: key = dest·t + token.
    dest = ids // moe.experts_per_rank
    keys, pair_row = torch.unique(dest * t + torch.arange(t, device=x.device)[:, None], return_inverse=True)
    row_token, row_dest = keys % t, keys // t
    # Per row, the expert and routing weight of each slot that goes to that rank (-1 / 0 elsewhere).
    row_experts = torch.full((keys.numel(), k), -1, dtype=ids.dtype, device=x.device)
    row_weights = torch.zeros(keys.numel(), k, dtype=torch.float32, device=x.device)
    slot = torch.arange(k, device=x.device).expand(t, k)
    row_experts[pair_row, slot] = ids
    row_weights[pair_row, slot] = weights
    send = torch.bincount(row_dest, minlength=ctx.world_size)
    recv = exchange_counts(send, ctx)
    send_n, recv_n = send.tolist(), recv.tolist()
    x_in = all_to_all_rows(xl[row_token], send_n, recv_n, ctx)
    e_in = all_to_all_rows(row_experts, send_n, recv_n, ctx)
    w_in = all_to_all_rows(row_weights, send_n, recv_n, ctx)
    y_back = all_to_all_rows(weighted_rows(moe, x_in, e_in, w_in), recv_n, send_n, ctx)  # in our row order
    out = torch.zeros(t, xl.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, row_token, y_back.float())
    if moe.has_shared_experts:
        out += moe.shared_output(xl)
    return all_gather_rows(out.to(x.dtype), shares, ctx)


def weighted_rows(moe: ExpertLayer, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Row i -> Σ_j weights[i, j]·expert_{experts[i, j]}(x_i) over the slots with an expert (>= 0)."""
    row, slot = (experts >= 0).nonzero(as_tuple=True)
    y = moe.expert_rows(x[row], experts[row, slot])
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, row, y.float() * weights[row, slot, None])
    return out.to(x.dtype)
