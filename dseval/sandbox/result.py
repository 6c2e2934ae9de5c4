"""What one sandboxed run produced, and counts over many."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["passed", "failed", "timeout", "error"]
STATUSES: tuple[Status, ...] = ("passed", "failed", "timeout", "error")


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program.

    passed:  the program and its tests ran to the end (completion proof seen), exited 0 and
             left no process behind.
    failed:  the program's fault: an exception (including SyntaxError), a non-zero exit, an
             early exit of any kind, a fatal signal (the memory cgroup's OOM kill included),
             the file-size limit.
    timeout: the wall-clock deadline or the CPU-time limit was hit.
    error:   the sandbox itself could not run the program (setup failure, worker crash);
             says nothing about the program and should be retried or investigated.

    ``tampered``: why the run looks forged ('' when nothing was seen): introspection that can
    reach the checks, a compared value not made of plain built-in types, a patched module.
    ``protections``: the isolation mechanisms that were in force for this run.
    """

    status: Status
    reason: str
    stdout: str
    stderr: str
    duration_s: float
    tampered: str = ""
    protections: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return asdict(self)


def summarize(results: Iterable[ExecResult]) -> dict[str, int]:
    """Count each status (all four keys always present), ``total`` and ``tampered`` passes."""
    counts = dict.fromkeys(STATUSES, 0)
    tampered = 0
    for res in results:
        counts[res.status] += 1
        tampered += res.status == "passed" and bool(res.tampered)
    counts["total"] = sum(counts.values())
    counts["tampered"] = tampered
    return counts
