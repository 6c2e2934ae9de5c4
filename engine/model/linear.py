"""Bias-free linear layer that holds either a dense weight or an FP8 weight with its 128x128
block scales (DeepSeek-V3 §3.3). Which one it holds is decided by the loader; on FP8-capable
GPUs the FP8 form goes to ``dseval.kernels.fp8_gemm.fp8_linear``, imported only on that path so
CPU runs never need Triton.

Under tensor parallelism a layer holds one part of the checkpoint weight: ``shard`` names it
(``ColumnParallelLinear`` keeps a block of output rows, ``RowParallelLinear`` a block of input
columns and sums the ranks' partial outputs), and the loader reads exactly that part."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dseval.engine.model.fp8_blocks import FP8_DTYPE, dequantize_blockwise
from dseval.engine.parallel.collectives import all_reduce
from dseval.engine.parallel.context import ParallelContext
from dseval.engine.parallel.sharding import TensorShard, local_size


class Linear(nn.Module):
    """y = x Wᵀ. ``weight_scale_inv`` is None unless the weight is stored as FP8."""

    def __init__(self, in_features: int, out_features: int, block_size: tuple[int, int] = (128, 128)) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.block_size = block_size
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.weight_scale_inv: nn.Parameter | None = None
        #: The part of the checkpoint tensor this layer holds (None: all of it).
        self.shard: TensorShard | None = None

    @property
    def is_fp8(self) -> bool:
        return self.weight.dtype == FP8_DTYPE

    def set_fp8(self, weight: torch.Tensor, scale_inv: torch.Tensor) -> None:
        """Keep the weight in FP8 (GPU FP8 GEMM path)."""
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale_inv = nn.Parameter(scale_inv.float(), requires_grad=False)

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as a dense [out, in] tensor (dequantized if FP8); absorbed MLA needs it."""
        if self.is_fp8:
            assert self.weight_scale_inv is not None
            return dequantize_blockwise(self.weight, self.weight_scale_inv, self.block_size, dtype)
        return self.weight.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_fp8:
            from dseval.kernels.fp8_gemm import fp8_linear  # lazy: GPU-only dependency

            return fp8_linear(x, self.weight, self.weight_scale_inv)
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fp8={self.is_fp8}"


class ColumnParallelLinear(Linear):
    """Holds output rows ``[r·out/W, (r+1)·out/W)``; each rank produces its own output features,
    so no communication (the next layer is row-parallel or works per head)."""

    def __init__(self, in_features: int, out_features: int, block: tuple[int, int], parallel: ParallelContext,
                 what: str = "out_features") -> None:
        w = parallel.tp_size
        super().__init__(in_features, local_size(out_features, w, what), block)
        self.shard = TensorShard(0, parallel.tp_rank, w) if w > 1 else None


class RowParallelLinear(Linear):
    """Holds input columns ``[r·in/W, (r+1)·in/W)``; outputs are partial sums, all-reduced here
    unless ``reduce=False`` (the MoE sums experts first and reduces once)."""

    def __init__(self, in_features: int, out_features: int, block: tuple[int, int], parallel: ParallelContext,
                 what: str = "in_features", reduce: bool = True) -> None:
        w = parallel.tp_size
        super().__init__(local_size(in_features, w, what), out_features, block)
        self.shard = TensorShard(1, parallel.tp_rank, w) if w > 1 else None
        self.parallel = parallel
        self.reduce = reduce and w > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return all_reduce(y, self.parallel) if self.reduce else y
