"""kernels.tile_order: every program gets a distinct output tile, and every tile is taken."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede any triton import

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl
from dseval.kernels.tile_order import grouped_tile


@triton.jit
def _tiles_kernel(out_ptr, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)
    tl.store(out_ptr + 2 * pid, pid_m)
    tl.store(out_ptr + 2 * pid + 1, pid_n)


def _tiles(m: int, n: int, group: int) -> list[tuple[int, int]]:
    out = torch.full((m * n, 2), -1, dtype=torch.int32)
    _tiles_kernel[(m * n,)](out, m, n, GROUP_M=group)
    return [tuple(r) for r in out.tolist()]


@pytest.mark.parametrize("m,n,group", [(7, 3, 2), (8, 5, 4), (5, 4, 8), (1, 6, 3), (9, 2, 0)])
def test_grouped_tile_is_a_permutation(m: int, n: int, group: int) -> None:
    tiles = _tiles(m, n, group)
    assert sorted(tiles) == [(i, j) for i in range(m) for j in range(n)]


def test_grouped_tile_orders() -> None:
    # GROUP_M = 0: row tiles fastest, the order of the 2-D grid it replaced
    assert _tiles(3, 2, 0) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    # groups of 2 row tiles sweep every column before the next group; the last group is short
    assert _tiles(3, 2, 2) == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (2, 1)]
