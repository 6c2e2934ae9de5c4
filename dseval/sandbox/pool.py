"""Run many programs in parallel, one uid lease per running program."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .result import ExecResult

RunOne = Callable[[str], ExecResult]


def run_parallel(run_one: RunOne, programs: Sequence[str], workers: int,
                 on_result: Callable[[int, ExecResult], None] | None = None) -> list[ExecResult]:
    """Results in input order. Threads suffice: each run is a child process; the harness only
    waits on pipes. ``on_result(index, result)`` is called in completion order, one call at a
    time (serialized by a lock), from worker threads."""
    results: list[ExecResult | None] = [None] * len(programs)
    lock = threading.Lock()

    def task(index: int) -> None:
        res = run_one(programs[index])
        results[index] = res
        if on_result is not None:
            with lock:
                on_result(index, res)

    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(programs)), thread_name_prefix="dseval-sbx") as ex:
        for fut in [ex.submit(task, i) for i in range(len(programs))]:
            fut.result()  # re-raise a callback's exception instead of losing it
    return [r for r in results if r is not None]
