"""Vocabulary-parallel embedding and output head (Megatron-style).

DeepSeek-V3's 129280 x 7168 table is ~1.7 GiB in bf16 and there are three of them (embedding,
head, MTP head); splitting the vocabulary keeps that off every rank. The embedding looks up only
the ids inside this rank's range (others give zero rows) and sums over ranks; the head computes
its vocabulary columns and all-gathers the logits so every rank samples the same token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dseval.engine.model.linear import ColumnParallelLinear
from dseval.engine.parallel.collectives import all_gather_last, all_reduce
from dseval.engine.parallel.context import ParallelContext
from dseval.engine.parallel.sharding import TensorShard, local_size


class VocabParallelEmbedding(nn.Module):
    """Rows ``[r·V/W, (r+1)·V/W)`` of the embedding table; ``weight`` keeps the checkpoint name."""

    def __init__(self, vocab_size: int, hidden: int, parallel: ParallelContext = ParallelContext()) -> None:  # noqa: B008
        super().__init__()
        w = parallel.tp_size
        self.parallel = parallel
        self.num_embeddings = local_size(vocab_size, w, "vocab_size")
        self.start = parallel.tp_rank * self.num_embeddings
        self.weight = nn.Parameter(torch.empty(self.num_embeddings, hidden), requires_grad=False)
        self.shard: TensorShard | None = TensorShard(0, parallel.tp_rank, w) if w > 1 else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.shard is None:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.num_embeddings)
        h = F.embedding(local.masked_fill(outside, 0), self.weight)
        h = h.masked_fill(outside[:, None], 0)
        return all_reduce(h, self.parallel)


class VocabParallelHead(ColumnParallelLinear):
    """Output projection split by vocabulary rows; returns the full-vocabulary logits on every rank."""

    def __init__(self, hidden: int, vocab_size: int, parallel: ParallelContext = ParallelContext(),  # noqa: B008
                 block: tuple[int, int] = (128, 128)) -> None:
        super().__init__(hidden, vocab_size, block, parallel, what="vocab_size")
        self.parallel = parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return all_gather_last(y, self.parallel) if self.shard is not None else y
