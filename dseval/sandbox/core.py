"""The public entry point: ``Sandbox``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .execute import execute
from .isolation import Mode, resolve_mode, uid_lease
from .limits import SandboxLimits
from .pool import run_parallel
from .result import ExecResult


class Sandbox:
    """Runs untrusted Python programs (task test code already appended), never in-process.

    ``workers=None`` means one worker per CPU core. The isolation mode is probed once per
    process (see ``dseval.sandbox.isolation``) and exposed as ``isolation``.
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits(), workers: int | None = None) -> None:  # noqa: B008
        if not isinstance(limits, SandboxLimits):
            raise TypeError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
        self.limits = limits
        self.workers = workers or os.cpu_count() or 1
        self._mode, self.isolation_note = resolve_mode()

    @property
    def isolation(self) -> Mode:
        return self._mode

    def run(self, program: str) -> ExecResult:
        if not isinstance(program, str):
            raise TypeError(f"program must be str, got {type(program).__name__}")
        with uid_lease() as (uid, gid):
            return execute(program, self.limits, self._mode, uid, gid)

    def run_all(self, programs: Sequence[str],
                on_result: Callable[[int, ExecResult], None] | None = None) -> list[ExecResult]:
        """Run ``programs`` on ``workers`` parallel slots; results come back in input order."""
        return run_parallel(self.run, list(programs), self.workers, on_result)
