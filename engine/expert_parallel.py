"""Expert parallelism with token dispatch: all-to-all to the experts' owners and back.

Every rank of a replica holds the same T tokens when the MoE starts (attention is replicated or
tensor-parallel and all-reduced). Under the reference scheme (``moe_comm="all_reduce"``) each rank
would route all T tokens and run its experts on them, then all-reduce T x hidden. Here each rank
instead takes a 1/W share of the tokens and, per step:

1. routes its share (router replicated), sorts its (token, expert) pairs by expert — experts are
   partitioned contiguously, so that also groups them by owner rank;
2. exchanges per-peer pair counts (one small all-to-all), then the pair rows and their expert ids;
3. runs the received rows through its own experts and sends the results back the same way;
4. weights and sums them per token, adds the (replicated) shared experts for its share, and
   all-gathers the shares so every rank again holds all T outputs.

Each rank runs the router, shared experts and its experts on ~T/W tokens instead of T; traffic is
k·T/W rows each way plus the final all-gather, instead of an all-reduce of T rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .collectives import all_gather_rows, all_to_all_rows, exchange_counts

if TYPE_CHECKING:
    from .moe import MoE


def token_shares(num_tokens: int, world: int) -> list[int]:
    """Rows per rank: contiguous, sizes differ by at most one (rank order)."""
    base, extra = divmod(num_tokens, world)
    return [base + (r < extra) for r in range(world)]


def moe_all_to_all(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The MoE layer's output for all of ``x`` [T, hidden], computed with token dispatch."""
    ctx = moe.parallel
    shares = token_shares(x.shape[0], ctx.world_size)
    start = sum(shares[: ctx.rank])
    xl = x[start : start + shares[ctx.rank]]  # this rank's share of the tokens
    weights, ids = moe.gate(xl)
    flat = ids.flatten()
    order = flat.argsort(stable=True)  # pairs grouped by expert, hence by owner rank
    experts = flat[order]
    tok = order // ids.shape[1]
    send = torch.bincount(experts // moe.experts_per_rank, minlength=ctx.world_size)
    recv = exchange_counts(send, ctx)
    send_n, recv_n = send.tolist(), recv.tolist()
    x_in = all_to_all_rows(xl[tok], send_n, recv_n, ctx)
    e_in = all_to_all_rows(experts, send_n, recv_n, ctx)
    y_back = all_to_all_rows(moe.expert_rows(x_in, e_in), recv_n, send_n, ctx)  # in our sorted pair order
    out = torch.zeros(xl.shape[0], xl.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, tok, y_back.float() * weights.flatten()[order, None])
    if moe.shared_experts is not None:
        out += moe.shared_experts(xl).float()
    return all_gather_rows(out.to(x.dtype), shares, ctx)
