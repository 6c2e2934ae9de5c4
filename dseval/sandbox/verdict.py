"""Turn what a run left behind (trusted status events, control lines) into status + reason.

Only the supervisor channel is trusted (the program never holds it); the control channel is
written by the program's process, so from it we believe nothing but an exact ``PASS <token>``
line, and use ``EXC`` lines only as the human-readable reason for a failure.
"""

from __future__ import annotations

import ast
import signal

from .limits import SandboxLimits
from .result import Status


def _events(raw: bytes) -> list[dict]:
    events = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            event = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def decide(sup: bytes, ctl: bytes, token: str, stopped: str | None, returncode: int | None,
           limits: SandboxLimits) -> tuple[Status, str]:
    if stopped == "timeout":
        return "timeout", f"wall-clock limit of {limits.timeout_s:g} s exceeded"
    if stopped == "output":
        return "failed", f"output limit of {limits.max_output_bytes} bytes per stream exceeded"
    events = _events(sup)
    for event in events:
        if event.get("event") == "error":
            return "error", str(event.get("message", "sandbox setup failed"))
    exits = [e for e in events if e.get("event") == "exit"]
    if not exits:
        return "error", f"sandbox supervisor ended without a status (exit code {returncode})"
    end = exits[-1]
    lines = ctl.decode("utf-8", "replace").splitlines()
    completed = f"PASS {token}" in lines
    exc = next((line[4:] for line in reversed(lines) if line.startswith("EXC ")), "")
    value = int(end.get("value", -1))
    if end.get("kind") == "signaled":
        if value == signal.SIGXCPU:
            return "timeout", f"CPU time limit of {limits.cpu_s:g} s exceeded"
        if value == signal.SIGXFSZ:
            return "failed", f"file size limit of {limits.file_size_bytes} bytes exceeded"
        return "failed", f"killed by {_signame(value)}" + (f" after {exc}" if exc else "")
    if value != 0:
        return "failed", exc or f"exited with code {value}"
    if not completed:
        return "failed", exc or "exited with code 0 before reaching the end of the program"
    if end.get("leftover"):
        return "failed", f"left {end['leftover']} process(es) running after the program ended"
    return "passed", ""
