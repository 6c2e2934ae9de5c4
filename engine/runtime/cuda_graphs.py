"""CUDA-graph capture and replay of the decode step (gpt-fast / vLLM style static decode).

Why: a decode step of a DeepSeek-V3 layer is ~20 small kernels; launched eagerly, the launch
overhead (~5-40 us each from Python) exceeds the time the GPU needs to stream the weights at
batch 1 (bench/README.md). A captured graph replays all of them with one launch.

A graph is valid only for the tensor addresses and shapes it was captured with. The model
runner therefore feeds decode steps through persistent buffers
(:class:`dseval.engine.runtime.decode_buffers.DecodeBuffers`) and pads the batch up to the next
*bucket* in ``batch_sizes``; padded rows carry token 0 at
position 0, a context length of 0 (the attention kernel writes zeros for them) and a cache
slot in a scratch block that no sequence owns. Graphs are keyed by (bucket, block-table width)
and captured lazily on first use, after eager warm-up runs that compile the Triton kernels and
build the absorbed-MLA weights. Sampling stays outside the graph (its parameters vary by row).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

#: Default buckets: every batch size up to 8, then steps of 8 to 64, then of 32.
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 96, 128, 160, 192, 224, 256)


def graph_batch_sizes(max_num_seqs: int, sizes: Iterable[int] | None = None) -> list[int]:
    """The buckets for an engine of ``max_num_seqs``: the given (or default) sizes up to it,
    plus ``max_num_seqs`` itself so that every decode batch has a bucket."""
    chosen = sorted({s for s in (sizes or DEFAULT_BATCH_SIZES) if 1 <= s <= max_num_seqs})
    if not chosen or chosen[-1] != max_num_seqs:
        chosen.append(max_num_seqs)
    return chosen


def bucket_for(n: int, sizes: list[int]) -> int | None:
    """Smallest bucket >= n, or None when n exceeds them all (then the step runs eagerly)."""
    i = bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else None


@dataclass
class CapturedStep:
    graph: torch.cuda.CUDAGraph
    output: torch.Tensor  # the model's hidden states, written in place by every replay


class DecodeGraphs:
    """Lazily captured decode-step graphs of one model, keyed by (batch bucket, table width)."""

    def __init__(self, forward: Callable[[], torch.Tensor], batch_sizes: list[int], warmup: int = 2) -> None:
        #: Runs the model on the runner's persistent buffers as currently laid out.
        self.forward = forward
        self.batch_sizes = batch_sizes
        self.warmup = warmup
        self.graphs: dict[tuple[int, int], CapturedStep] = {}

    def bucket(self, n: int) -> int | None:
        return bucket_for(n, self.batch_sizes)

    def run(self, key: tuple[int, int]) -> torch.Tensor:
        """Replay (capturing first if new) the graph for ``key``; returns its output buffer."""
        step = self.graphs.get(key)
        if step is None:
            step = self.graphs[key] = self._capture()
        step.graph.replay()
        return step.output

    def _capture(self) -> CapturedStep:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile kernels, build lazily cached weights
            for _ in range(self.warmup):
                self.forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.forward()
        return CapturedStep(graph, out)
