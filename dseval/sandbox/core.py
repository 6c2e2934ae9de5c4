"""The public entry point: ``Sandbox``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .isolation import Mode, resolve_mode, uid_lease
from .job import Job
from .limits import SandboxLimits
from .pool import run_parallel
from .result import ExecResult
from .worker import Worker, WorkerError


class _Slot:
    """One uid lease and the warm worker that runs under it, restarted if it dies."""

    def __init__(self, mode: Mode, limits: SandboxLimits) -> None:
        self._mode, self._limits = mode, limits
        self._lease = uid_lease()
        self._uid, self._gid = self._lease.__enter__()
        self._worker: Worker | None = None

    def run(self, job: Job) -> ExecResult:
        try:
            if self._worker is None or not self._worker.alive:
                self._worker = Worker(self._mode, self._uid, self._gid)
            return self._worker.run(job, self._limits)
        except WorkerError as exc:
            if self._worker is not None:
                self._worker.close()
                self._worker = None
            return ExecResult("error", str(exc)[:300], "", "", 0.0)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        self._lease.__exit__(None, None, None)


def _probe() -> str:
    slot = _Slot("namespaces", SandboxLimits(timeout_s=20.0))
    try:
        res = slot.run(Job("import sys\nassert sys.version_info"))
    finally:
        slot.close()
    return "" if res.status == "passed" else f"namespace probe {res.status}: {res.reason}"


def _as_job(program: str | Job) -> Job:
    if isinstance(program, Job):
        return program
    if not isinstance(program, str):
        raise TypeError(f"program must be str or Job, got {type(program).__name__}")
    return Job(program)


class Sandbox:
    """Runs untrusted Python programs (with their tests kept apart), never in-process.

    ``workers=None`` means one worker per CPU core. The isolation mode is probed once per
    process (see ``dseval.sandbox.isolation``) and exposed as ``isolation``. ``run_all``
    keeps one warm worker per slot for the whole batch.
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits(), workers: int | None = None) -> None:  # noqa: B008
        if not isinstance(limits, SandboxLimits):
            raise TypeError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
        self.limits = limits
        self.workers = workers or os.cpu_count() or 1
        self._mode, self.isolation_note = resolve_mode(_probe)

    @property
    def isolation(self) -> Mode:
        return self._mode

    def _open_slot(self) -> _Slot:
        return _Slot(self._mode, self.limits)

    def run(self, program: str | Job) -> ExecResult:
        job = _as_job(program)
        slot = self._open_slot()
        try:
            return slot.run(job)
        finally:
            slot.close()

    def run_all(self, programs: Sequence[str | Job],
                on_result: Callable[[int, ExecResult], None] | None = None) -> list[ExecResult]:
        """Run ``programs`` on ``workers`` parallel slots; results come back in input order."""
        jobs = [_as_job(p) for p in programs]
        return run_parallel(self._open_slot, jobs, self.workers, on_result)
