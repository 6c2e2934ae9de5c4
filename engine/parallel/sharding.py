"""Which part of a tensor a rank holds: :class:`TensorShard` says "split dim ``dim`` into
``count`` equal parts, keep part ``index``".

Layers record their part here when they are built; :mod:`dseval.engine.loading.shard_reader`
reads exactly that part off the disk. Pure layout arithmetic, so the model can depend on it
without depending on the checkpoint reader.
"""

from __future__ import annotations

from dataclasses import dataclass

from dseval.engine.errors import LayoutError


@dataclass(frozen=True)
class TensorShard:
    """Part ``index`` of ``count`` equal parts along ``dim``."""

    dim: int
    index: int
    count: int

    def bounds(self, full: int, what: str = "tensor") -> tuple[int, int]:
        """[start, stop) of this part of a dimension of length ``full``."""
        if full % self.count:
            raise LayoutError(f"{what}: dimension {self.dim} of size {full} does not split into {self.count} equal parts")
        size = full // self.count
        return self.index * size, (self.index + 1) * size


def local_size(full: int, count: int, what: str) -> int:
    """``full / count``, refusing layouts that do not divide (named after the hyper-parameter)."""
    if full % count:
        raise LayoutError(f"{what} = {full} is not divisible by the {count} parallel ranks")
    return full // count
