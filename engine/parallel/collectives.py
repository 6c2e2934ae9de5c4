"""The few collectives the sharded layers need, as functions of a :class:`ParallelContext`.

Each is the identity on a single process, so layers call them unconditionally and a one-process
model never touches ``torch.distributed``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dseval.engine.parallel.context import ParallelContext


def all_reduce(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Sum of ``x`` over the replica's ranks: the returned tensor (``x`` itself for NCCL and
    gloo, which reduce in place; a new one from the one-shot kernel for small GPU tensors)."""
    if ctx.is_single:
        return x
    if ctx.one_shot is not None and ctx.one_shot.fits(x):
        return ctx.one_shot(x)
    dist.all_reduce(x, group=ctx.group)
    return x


def all_gather_last(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Concatenate every rank's equally shaped ``x`` along the last dim, in rank order."""
    if ctx.is_single:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(parts, x.contiguous(), group=ctx.group)
    return torch.cat(parts, dim=-1)


def all_gather_rows(x: torch.Tensor, rows: list[int], ctx: ParallelContext) -> torch.Tensor:
    """Concatenate rank r's ``x`` of ``rows[r]`` rows along dim 0. Shards may differ by a row,
    so each is padded to the largest before the (equal-size) all-gather and trimmed after."""
    if ctx.is_single:
        return x
    width = max(rows)
    padded = x.new_zeros(width, *x.shape[1:])
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded, group=ctx.group)
    return torch.cat([p[:n] for p, n in zip(parts, rows)], dim=0)


def exchange_counts(send_counts: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """All-to-all of one count per peer: how many rows each rank will send to this one."""
    recv = torch.empty_like(send_counts)
    dist.all_to_all_single(recv, send_counts, group=ctx.group)
    return recv


def all_to_all_rows(x: torch.Tensor, send: list[int], recv: list[int], ctx: ParallelContext) -> torch.Tensor:
    """Rows ``x`` split ``send[r]`` to rank r; returns the ``sum(recv)`` rows the peers sent here."""
    out = x.new_empty(sum(recv), *x.shape[1:])
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=ctx.group)
    return out


def min_over_ranks(value: int, ctx: ParallelContext) -> int:
    """The smallest ``value`` of the replica's ranks. Ranks must make identical scheduling
    decisions (each step is a collective), so sizes derived from per-GPU free memory, such as
    the number of KV-cache blocks, are agreed on this way."""
    if ctx.is_single:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend(ctx.group) == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=ctx.group)
    return int(t.item())
