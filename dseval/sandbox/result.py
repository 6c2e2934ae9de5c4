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

    passed:  the program ran to its last line (completion token seen), exited 0 and left no
             process behind.
    failed:  the program's fault: an exception (including SyntaxError), a non-zero exit, an
             early exit of any kind, a fatal signal, the file-size or output limit.
    timeout: the wall-clock deadline or the CPU-time limit was hit.
    error:   the sandbox itself could not run the program (setup failure, supervisor crash);
             says nothing about the program and should be retried or investigated.
    """

    status: Status
    reason: str
    stdout: str
    stderr: str
    duration_s: float

    def to_json(self) -> dict:
        return asdict(self)


def summarize(results: Iterable[ExecResult]) -> dict[str, int]:
    """Count each status (all four keys always present) plus ``total``."""
    counts = dict.fromkeys(STATUSES, 0)
    for res in results:
        counts[res.status] += 1
    counts["total"] = sum(counts.values())
    return counts
