"""Which output tile a program of a 1-D GEMM grid computes.

Programs run roughly in launch order, so the order decides what the L2 cache can share. With
``GROUP_M`` row tiles per group, consecutive programs sweep every column tile of a few row
tiles: those rows of A are read from HBM once and stay in L2 while all of B's column tiles pass
them, instead of being re-read once per column tile, which is what row-tiles-fastest order over
a tall grid costs (the prefill MoE's gate/up GEMM at 16K tokens: its ~1 GB of gathered tokens
32 times; grouped, that GEMM pair ran 7% faster, bench/README.md "Tile order").
"""

from __future__ import annotations

from .fp8_quant import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
        """(pid_m, pid_n) of program ``pid``; ``GROUP_M == 0`` means one group of all row
        tiles, i.e. row tiles fastest (the order of a 2-D grid ``(num_pid_m, num_pid_n)``)."""
        if GROUP_M == 0:
            group = num_pid_m
        else:
            group = GROUP_M
        width = group * num_pid_n
        first_m = (pid // width) * group
        size_m = tl.minimum(num_pid_m - first_m, group)
        pid_m = first_m + (pid % width) % size_m
        pid_n = (pid % width) // size_m
        return pid_m, pid_n
