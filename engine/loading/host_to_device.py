"""Host-to-GPU copies of checkpoint tensors through two pinned staging buffers.

A tensor read from a memory-mapped shard lives in pageable memory; ``tensor.to("cuda")`` of it is
synchronous and the driver stages it through small pinned pieces of its own, one host copy after
another. Here the host copies the next tensors into one pinned buffer (torch spreads a large copy
over its threads, page faults of the mapping included) while the GPU pulls the previous buffer
over DMA, so the copy runs near the slower of the two rates instead of their sum. Small tensors
share a buffer, so a layer norm costs no transfer of its own; a tensor larger than a buffer goes
through both in turns.
"""

from __future__ import annotations

import torch

#: Offsets inside a buffer start on this boundary (DMA of unaligned host addresses is slower).
_ALIGN = 512


class HostToDevice:
    """Copies host tensors to ``device``; ``copy`` returns the device tensor, its data in flight
    on the current stream (ordered before any later work on that stream).

    ``pinned`` is for tests on a CPU-only machine (page-locking needs CUDA): the buffer logic runs
    the same with ordinary host buffers."""

    def __init__(self, device: torch.device, buffer_bytes: int = 256 << 20, *, pinned: bool = True) -> None:
        self.device = device
        self.buffers = [torch.empty(buffer_bytes, dtype=torch.uint8, pin_memory=pinned) for _ in range(2)]
        self._fences: list[torch.cuda.Event | None] = [None, None]
        self._current = 0
        self._offset = 0

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        out = torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device)
        if not tensor.numel():
            return out
        src = tensor.contiguous().reshape(-1).view(torch.uint8)
        dst = out.reshape(-1).view(torch.uint8)
        done = 0
        while done < src.numel():
            room = self._room()
            n = min(room, src.numel() - done)
            staged = self.buffers[self._current][self._offset : self._offset + n]
            staged.copy_(src[done : done + n])
            dst[done : done + n].copy_(staged, non_blocking=True)
            done += n
            self._offset += -(-n // _ALIGN) * _ALIGN
        return out

    def _room(self) -> int:
        """Free bytes in the current buffer; a full one is handed to the GPU and the other one,
        once the GPU has read it, becomes current."""
        size = self.buffers[self._current].numel()
        if self._offset < size:
            return size - self._offset
        self._fences[self._current] = self._fence()
        self._current ^= 1
        self._offset = 0
        fence = self._fences[self._current]
        if fence is not None:
            fence.synchronize()
        return self.buffers[self._current].numel()

    def _fence(self) -> torch.cuda.Event | None:
        if self.device.type != "cuda":
            return None  # host copies are synchronous
        event = torch.cuda.Event()
        event.record()
        return event

    def finish(self) -> None:
        """Wait for every copy issued, so the buffers can be freed or reused by the caller."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
