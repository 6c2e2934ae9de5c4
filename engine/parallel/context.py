"""Parallel layout of one model replica: which ranks hold it and how its layers are split.

Layers take this object explicitly instead of reading a module-level rank so that two models with
different layouts can live in one process (tests build a single-process model next to a gloo TP
pair) and so that nothing depends on import-time environment variables.

* ``tp``: attention heads, dense MLPs, the vocabulary embedding and the output heads are split
  ``world_size`` ways (Megatron column/row split); without ``ep`` each routed expert is sliced
  the same way (what vLLM does for a plain ``--tensor-parallel-size``).
* ``ep``: routed experts are partitioned, ``n_routed_experts / world_size`` whole experts per
  rank; router and shared experts are replicated. ``moe_comm`` picks how tokens reach them:
  ``all_to_all`` (each rank routes a 1/world share of the tokens and ships every (token, expert)
  pair to the owner rank, then gathers the results back) or ``all_reduce`` (DeepSeek's reference
  scheme: every rank runs its own experts over all tokens, one all-reduce sums them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

from dseval.engine.errors import LayoutError
from dseval.engine.parallel.one_shot_all_reduce import OneShotAllReduce

MoeComm = Literal["all_to_all", "all_reduce"]
MOE_COMMS: tuple[str, ...] = ("all_to_all", "all_reduce")


@dataclass(frozen=True)
class ParallelContext:
    """Where this process sits among the ``world_size`` processes that together hold one model."""

    rank: int = 0
    world_size: int = 1
    group: Any = None  # torch.distributed ProcessGroup of the replica; None = single process
    tp: bool = False
    ep: bool = False
    moe_comm: MoeComm = "all_to_all"
    #: small all-reduces over NVLink without NCCL (engine/parallel/one_shot_all_reduce.py); None: NCCL/gloo
    one_shot: OneShotAllReduce | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise LayoutError(f"bad parallel layout: rank={self.rank} world_size={self.world_size}")
        if self.world_size > 1 and not (self.tp or self.ep):
            raise LayoutError(f"{self.world_size} ranks hold one model but neither tp nor ep splits it")
        if self.moe_comm not in MOE_COMMS:
            raise LayoutError(f"moe_comm must be one of {MOE_COMMS}, not {self.moe_comm!r}")

    @property
    def is_single(self) -> bool:
        """True when one process holds the whole model (no collectives needed)."""
        return self.world_size == 1

    @property
    def tp_size(self) -> int:
        return self.world_size if self.tp else 1

    @property
    def tp_rank(self) -> int:
        return self.rank if self.tp else 0

    @property
    def ep_size(self) -> int:
        return self.world_size if self.ep else 1

    @property
    def ep_rank(self) -> int:
        return self.rank if self.ep else 0

    def describe(self) -> str:
        """``tp2``, ``ep8 all_to_all``, ``tp8 ep8 all_reduce`` or ``single`` (run.json records it)."""
        if self.is_single:
            return "single"
        parts = ([f"tp{self.world_size}"] if self.tp else []) + ([f"ep{self.world_size}", self.moe_comm] if self.ep else [])
        return " ".join(parts)

    @classmethod
    def from_options(cls, tp: int = 1, ep: int = 1, moe_comm: MoeComm = "all_to_all",
                     one_shot_all_reduce: bool = True) -> ParallelContext:
        """This rank's context from ``--tp/--ep`` once torch.distributed is initialised.

        The world splits into replicas of M = max(tp, ep) consecutive ranks (the layout of
        :class:`dseval.distributed.Topology`). ``new_group`` is collective over the *whole*
        world, so every rank creates every replica's group in the same order and keeps its own.
        On GPUs (NCCL) small all-reduces take the one-shot symmetric-memory kernel unless
        ``one_shot_all_reduce`` is False.
        """
        if tp == 1 and ep == 1:
            return cls(moe_comm=moe_comm)
        if not dist.is_initialized():
            raise RuntimeError(f"--tp {tp} --ep {ep} need torch.distributed (launch with torchrun)")
        size = max(tp, ep)
        for flag, value in (("tp", tp), ("ep", ep)):
            if value not in (1, size):
                raise LayoutError(f"{flag}={value}: tp and ep must each be 1 or the replica size {size}")
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % size:
            raise LayoutError(f"replica size {size} does not divide the world of {world} ranks")
        mine = None
        for start in range(0, world, size):
            group = dist.new_group(list(range(start, start + size)))
            if start <= rank < start + size:
                mine = group
        one_shot = None
        if one_shot_all_reduce and dist.get_backend(mine) == "nccl":
            one_shot = OneShotAllReduce.create(mine, torch.device("cuda", torch.cuda.current_device()))
        return cls(rank=rank % size, world_size=size, group=mine, tp=tp > 1, ep=ep > 1, moe_comm=moe_comm,
                   one_shot=one_shot)
