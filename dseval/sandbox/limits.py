"""Resource limits for one sandboxed program, and their translation to rlimits."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits; the defaults fit unit-test style programs (HumanEval, MBPP).

    ``max_processes`` is enforced as RLIMIT_NPROC, which the kernel counts per real uid (threads
    included); every concurrent run gets its own uid, so parallel workers do not share it.
    ``file_size_bytes`` caps any single file (RLIMIT_FSIZE); in namespace mode the whole
    working directory is also a tmpfs of ``2 * file_size_bytes`` holding at most ``max_inodes``
    files, and ``memory_bytes`` also caps the whole run (shared memory, memfd, tmpfs pages
    included) through a cgroup where the machine offers one. ``max_output_bytes`` is how much
    of stdout and stderr each is kept; the rest is discarded and the run goes on (the
    official checkers swallow output, so printing a lot is not a failure).
    """

    timeout_s: float = 10.0
    cpu_s: float = 10.0
    memory_bytes: int = 2 << 30
    file_size_bytes: int = 64 << 20
    max_processes: int = 64
    max_open_files: int = 256
    max_output_bytes: int = 64 << 10
    max_inodes: int = 16384

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_bytes", "file_size_bytes", "max_processes",
                     "max_open_files", "max_output_bytes", "max_inodes"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {value!r}")
        if self.max_open_files < 16:
            raise ValueError("SandboxLimits.max_open_files must be >= 16 (the interpreter needs a few)")

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """(soft, hard) pairs keyed by the names ``_child.runner`` understands.

        CPU: the soft limit sends SIGXCPU (reported as a timeout), the hard one SIGKILL a
        second later in case the program catches SIGXCPU.
        """
        cpu = max(1, math.ceil(self.cpu_s))
        return {
            "core": (0, 0),
            "cpu": (cpu, cpu + 1),
            "as": (self.memory_bytes, self.memory_bytes),
            "fsize": (self.file_size_bytes, self.file_size_bytes),
            "nproc": (self.max_processes, self.max_processes),
            "nofile": (self.max_open_files, self.max_open_files),
        }

    @property
    def tmpfs_bytes(self) -> int:
        return max(2 * self.file_size_bytes, 32 << 20)
