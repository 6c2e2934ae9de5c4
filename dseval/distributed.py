"""Process layout under ``torchrun``: data-parallel replicas, each a tensor/expert-parallel group.

``torchrun --nproc-per-node N -m dseval run ... --dp D --tp T --ep E`` starts N processes (the
environment says RANK and WORLD_SIZE; several hosts come from torchrun's own flags). The world
splits into D replicas of M = WORLD_SIZE / D consecutive ranks; inside a replica, attention and
dense layers are split T ways and routed experts E ways (each 1 or M). Replicas take disjoint
shares of the pending docs; only the first rank of each replica writes samples. NCCL on GPUs,
gloo on CPU. No launcher of our own: torchrun does rendezvous, so no address is hard-coded here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any

from dseval.backends.base import BackendOptions
from dseval.errors import UserError


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    dp: int = 1
    tp: int = 1
    ep: int = 1

    @property
    def model_size(self) -> int:
        """Ranks that together hold one copy of the model."""
        return self.world_size // self.dp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.model_size

    @property
    def model_rank(self) -> int:
        return self.rank % self.model_size

    @property
    def is_writer(self) -> bool:
        """The rank of a replica that records its samples."""
        return self.model_rank == 0

    @property
    def is_leader(self) -> bool:
        """The rank that merges shards and writes run.json and summary.json."""
        return self.rank == 0

    @classmethod
    def from_env(cls, dp: int = 1, tp: int = 1, ep: int = 1) -> Topology:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        for flag, value in (("--dp", dp), ("--tp", tp), ("--ep", ep)):
            if value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        if world % dp:
            raise UserError(f"--dp {dp} does not divide the {world} processes started by torchrun")
        model = world // dp
        for flag, value in (("--tp", tp), ("--ep", ep)):
            if value not in (1, model):
                raise UserError(f"{flag} {value}: with {world} processes and --dp {dp}, each replica has {model} ranks; use {flag} 1 or {model}")
        if model > 1 and tp == 1 and ep == 1:
            raise UserError(f"{world} processes with --dp {dp} leave {model} ranks per replica: set --tp or --ep to {model}, or --dp {world}")
        return cls(rank=rank, world_size=world, dp=dp, tp=tp, ep=ep)


def init_process_group(topology: Topology) -> None:
    """Join torchrun's process group once (NCCL when this rank has a GPU, else gloo)."""
    if topology.world_size == 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():  # naming the device lets NCCL bind it now instead of guessing
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", timeout=timedelta(minutes=30), device_id=device)
    else:
        dist.init_process_group(backend="gloo", timeout=timedelta(minutes=30))


def start_processes(options: BackendOptions) -> Topology:
    """This process's place in the ``--dp/--tp/--ep`` layout, its process group joined."""
    topology = Topology.from_env(options.dp, options.tp, options.ep)
    init_process_group(topology)
    return topology


def start_one_replica(options: BackendOptions, command: str) -> Topology:
    """:func:`start_processes` for commands that serve one stream of prompts (``generate``,
    ``chat``): their ranks may split one model (``--tp/--ep``) but not share prompts (``--dp``)."""
    if options.dp != 1:
        raise UserError(f"--dp {options.dp}: dseval {command} runs one model replica; split it with --tp or --ep")
    return start_processes(options)


class _LeaderLines:
    """Rank 0's stdin, read line by line and broadcast, so every rank of a tensor-parallel
    replica takes the same turn (all ranks must run the same model steps)."""

    def readline(self) -> str:
        import torch.distributed as dist

        line = [sys.stdin.readline() if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(line, src=0)
        return line[0]


def shared_stdin(topology: Topology) -> tuple[IO[str], IO[str]]:
    """Input and output streams of an interactive command under torchrun: every rank reads rank
    0's terminal; only rank 0 writes to it."""
    out = sys.stdout if topology.is_leader else open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (process-long)
    return _LeaderLines(), out  # type: ignore[return-value]


def from_leader(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (others pass anything): how the ranks of one split model
    under ``dseval serve`` learn which call rank 0 makes next."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def to_leader(value: Any) -> list[Any] | None:
    """Every rank's ``value``, in rank order, on rank 0 (None elsewhere): how the replicas of
    ``dseval serve --dp`` send their answers back to the rank that serves HTTP."""
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def barrier(topology: Topology) -> None:
    if topology.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def share(items: list[int], topology: Topology) -> list[int]:
    """This replica's share of the pending docs: every dp-th, so long and short docs mix."""
    return items[topology.dp_rank :: topology.dp]


def consecutive_shares(count: int, parts: int) -> list[range]:
    """``count`` items cut into ``parts`` runs of consecutive items whose sizes differ by at most
    one (the first runs take the extra). ``dseval serve --dp`` cuts each batch so: requests that
    arrive together (one prompt's ``n`` choices, one question's answer options) stay on one
    replica, whose prefix cache then shares their common start."""
    size, extra = divmod(count, parts)
    starts = [part * size + min(part, extra) for part in range(parts + 1)]
    return [range(starts[part], starts[part + 1]) for part in range(parts)]
