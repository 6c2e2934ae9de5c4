"""Reading the part of a checkpoint tensor a rank holds, and nothing more.

Reading goes through :meth:`CheckpointReader.get_slice` (safetensors ``get_slice``), so a rank
never pulls another rank's rows off the disk.

FP8 weights carry one scale per 128x128 block (DeepSeek-V3 §3.3.2). A shard whose edges fall on
block edges takes the matching block rows/columns of ``weight_scale_inv`` and stays FP8. One whose
edges cut through blocks cannot be FP8 (its edge blocks would need two scales): it is dequantized
with the covering scale blocks, or refused with the shapes spelled out when FP8 must be kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from dseval.engine.errors import CheckpointError
from dseval.engine.loading.checkpoint import SCALE_SUFFIX, CheckpointReader
from dseval.engine.model.fp8_blocks import FP8_DTYPE
from dseval.engine.parallel.sharding import TensorShard


def read_shard(reader: CheckpointReader, name: str, shard: TensorShard | None) -> torch.Tensor:
    """The rank's part of a (non-FP8 or FP8) tensor, read alone."""
    if shard is None:
        return reader.get(name)
    start, stop = shard.bounds(reader.infos[name].shape[shard.dim], name)
    return reader.get_slice(name, shard.dim, start, stop)


@dataclass(frozen=True)
class Fp8Shard:
    """An FP8 weight part and the ``weight_scale_inv`` blocks that cover it."""

    weight: torch.Tensor
    scale_inv: torch.Tensor
    lead: int  # elements of the first covering block that lie before the part
    dim: int
    aligned: bool  # both edges on block edges (or the tensor's end): the part can stay FP8

    def moved(self, move: Callable[[torch.Tensor], torch.Tensor]) -> Fp8Shard:
        """The same part with weight and scales passed through ``move`` (a host-to-device copy)."""
        return replace(self, weight=move(self.weight), scale_inv=move(self.scale_inv))


def read_fp8_shard(reader: CheckpointReader, name: str, shard: TensorShard | None,
                   block: tuple[int, int]) -> Fp8Shard:
    """Read an FP8 weight part and the scale blocks that cover it, both as stored (no dequantization).

    The part is block-aligned when its start is a multiple of the block and its end is one too
    or is the tensor's end. E.g. TP8 of V3's dense ``down_proj`` (K = 18432) keeps K = 2304 =
    18 blocks per rank: aligned, but K/128 = 18 is not a multiple of 4, the cuBLAS block-scaled
    GEMM trap that ``dseval.kernels.fp8_gemm`` routes around (Triton W8A8 path)."""
    weight = read_shard(reader, name, shard)
    if shard is None:
        return Fp8Shard(weight, reader.get(name + SCALE_SUFFIX), 0, 0, True)
    b = block[shard.dim]
    full = reader.infos[name].shape[shard.dim]
    start, stop = shard.bounds(full, name)
    first, last = start // b, -(-stop // b)
    scale = reader.get_slice(name + SCALE_SUFFIX, shard.dim, first, last)
    aligned = start % b == 0 and (stop % b == 0 or stop == full)
    return Fp8Shard(weight, scale, start - first * b, shard.dim, aligned)


def dequantize_shard(part: Fp8Shard, block: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Exact dequantization of any part, aligned or not: expand the covering scale blocks to
    elements, drop the ``lead`` ones before the part, crop to the part."""
    w = part.weight
    s = part.scale_inv.float().repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)
    lead = part.lead
    if part.dim == 0:
        s = s[lead : lead + w.shape[0], : w.shape[1]]
    else:
        s = s[: w.shape[0], lead : lead + w.shape[1]]
    return (w.float() * s).to(dtype)


def require_aligned(part: Fp8Shard, name: str, shard: TensorShard | None, block: tuple[int, int]) -> None:
    """Refuse to keep an FP8 part whose edges cut 128x128 scale blocks."""
    if part.aligned or shard is None:
        return
    side = "rows (output features)" if shard.dim == 0 else "columns (input features, K)"
    raise CheckpointError(
        f"{name}: the {shard.count}-way split gives rank {shard.index} {side} of size {part.weight.shape[shard.dim]}, "
        f"which cuts the {block[shard.dim]}-wide FP8 scale blocks; keeping FP8 is impossible for this layout. "
        f"Use a parallel degree whose slices are multiples of {block[shard.dim]}, or load with fp8_weights='dequantize'")


def is_fp8(reader: CheckpointReader, name: str) -> bool:
    return reader.infos[name].dtype == FP8_DTYPE
