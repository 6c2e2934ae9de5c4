"""Turn what a run left behind (trusted status events, control lines) into status + reason.

Only the status channel is trusted (the program never holds it); the control channel is
written by the program's process, so from it we believe nothing but an exact ``PASS <token>``
line, use ``EXC`` lines only as the human-readable reason for a failure, and take every
``TAMPER`` line as evidence (a program can add lines, never remove one: the runner writes each
on a line of its own).
"""

from __future__ import annotations

import ast
import signal

from .limits import SandboxLimits
from .result import Status

_REASON_CAP = 300


def events(raw: bytes) -> list[dict]:
    out = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            event = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _tampered(lines: list[str]) -> str:
    reasons = list(dict.fromkeys(line[7:].strip() for line in lines if line.startswith("TAMPER ")))
    return "; ".join(reasons)[:_REASON_CAP]


def decide(sup: list[dict], ctl: bytes, token: str, timed_out: bool,
           limits: SandboxLimits) -> tuple[Status, str, str]:
    """(status, reason, tampered); ``tampered`` is '' when nothing suspicious was reported."""
    lines = ctl.decode("utf-8", "replace").splitlines()
    tampered = _tampered(lines)
    status, reason = _status(sup, lines, token, timed_out, limits)
    return status, reason[:_REASON_CAP], tampered


def _status(sup: list[dict], lines: list[str], token: str, timed_out: bool,
            limits: SandboxLimits) -> tuple[Status, str]:
    if timed_out:
        return "timeout", f"wall-clock limit of {limits.timeout_s:g} s exceeded"
    for event in sup:
        if event.get("event") == "error":
            return "error", str(event.get("message", "sandbox setup failed"))
    exits = [e for e in sup if e.get("event") == "exit"]
    if not exits:
        return "error", "sandbox worker ended the run without a status"
    end = exits[-1]
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
