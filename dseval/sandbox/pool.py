"""Run many jobs on parallel slots, each slot a warm worker used for one job at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from .job import Job
from .result import ExecResult


class Slot(Protocol):
    def run(self, job: Job) -> ExecResult: ...
    def close(self) -> None: ...


def run_parallel(open_slot: Callable[[], Slot], jobs: Sequence[Job], workers: int,
                 on_result: Callable[[int, ExecResult], None] | None = None) -> list[ExecResult]:
    """Results in input order. Threads suffice: each run is a child process; the harness only
    waits on pipes. Each thread opens its own slot (so a worker's death signal is tied to a
    thread that outlives its runs). ``on_result(index, result)`` is called in completion
    order, one call at a time (serialized by a lock), from worker threads."""
    results: list[ExecResult | None] = [None] * len(jobs)
    lock, callback_lock = threading.Lock(), threading.Lock()
    pending = iter(range(len(jobs)))
    errors: list[BaseException] = []

    def serve() -> None:
        slot = None
        try:
            while not errors:
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                slot = slot or open_slot()
                results[index] = res = slot.run(jobs[index])
                if on_result is not None:
                    with callback_lock:
                        on_result(index, res)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
        finally:
            if slot is not None:
                slot.close()

    threads = [threading.Thread(target=serve, name=f"dseval-sbx-{i}", daemon=True)
               for i in range(min(workers, len(jobs)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]
