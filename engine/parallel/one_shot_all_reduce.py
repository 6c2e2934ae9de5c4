"""All-reduce of small tensors over NVLink through symmetric memory (one kernel, no NCCL).

Why: a decode step of a tensor-parallel model all-reduces one hidden state per token twice per
layer, a few to a few hundred KB each. NCCL's ring all-reduce costs ~10 us per call inside a
CUDA graph at those sizes (seven per W3 step at TP2: ~72 us of a ~1.0 ms step), which is what
vLLM's and SGLang's custom all-reduces exist for. Here every rank copies its tensor into a
buffer that all ranks of the group have mapped (PyTorch's symmetric memory), waits on a flag
barrier, and sums all ranks' copies itself (``torch.ops.symm_mem.one_shot_all_reduce_copy``):
one kernel, in the same rank order on every rank, so all ranks get identical sums, as TP needs.
It uses plain peer loads (no NVLink multicast). Tensors larger than the buffer (prefill) keep
NCCL, whose bandwidth-optimal ring wins there.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

#: bytes of the per-rank buffer: a decode step's hidden states up to 128 tokens x 7168 x bf16
#: (1.8 MB) fit; prefill chunks do not and stay on NCCL
DEFAULT_MAX_BYTES: int = 4 << 20


class OneShotAllReduce:
    """Sum over the ranks of one process group for tensors of at most ``max_bytes`` bytes."""

    def __init__(self, buffer: torch.Tensor, group_name: str) -> None:
        self.buffer = buffer  # uint8, symmetric across the group's ranks
        self.group_name = group_name

    @classmethod
    def create(cls, group: Any, device: torch.device, max_bytes: int = DEFAULT_MAX_BYTES) -> OneShotAllReduce | None:
        """Collective over ``group``: every rank of it must call this, in the same order as its
        other collectives. ``None`` (callers keep NCCL) where the build has no symmetric memory."""
        try:
            import torch.distributed._symmetric_memory as symm_mem

            if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy"):
                return None
            name = group.group_name
            with warnings.catch_warnings():  # needed before torch 2.9, a deprecated no-op after
                warnings.simplefilter("ignore", FutureWarning)
                if hasattr(symm_mem, "enable_symm_mem_for_group"):
                    symm_mem.enable_symm_mem_for_group(name)
            buffer = symm_mem.empty(max_bytes, dtype=torch.uint8, device=device)
            symm_mem.rendezvous(buffer, name)
        except (ImportError, RuntimeError, AttributeError):
            return None
        return cls(buffer, name)

    def fits(self, x: torch.Tensor) -> bool:
        return x.is_cuda and x.is_contiguous() and x.numel() * x.element_size() <= self.buffer.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The sum as a new tensor (``x`` is left as it was)."""
        slot = self.buffer[: x.numel() * x.element_size()].view(x.dtype).view(x.shape)
        return torch.ops.symm_mem.one_shot_all_reduce_copy(slot, x, "sum", self.group_name)
