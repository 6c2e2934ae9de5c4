"""Turn what a run left behind (trusted status events, control lines) into status + reason.

Only the status channel is trusted: it is written by the zygote, the run's init and the
checker, never by the program's process. The checker's ``verdict`` event decides a pass (the
program ran to its end, the tests returned, the program's process then exited 0). From the
control channel, written by the program's process, we use ``EXC`` lines only as the
human-readable reason for a failure and take every ``TAMPER`` line as evidence.
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


def decide(sup: list[dict], ctl: bytes, timed_out: bool, limits: SandboxLimits) -> tuple[Status, str, str]:
    """(status, reason, tampered); ``tampered`` is '' when nothing suspicious was reported."""
    lines = ctl.decode("utf-8", "replace").splitlines()
    verdicts = [e for e in sup if e.get("event") == "verdict"]
    notes = [str(n) for n in verdicts[-1].get("notes", ())] if verdicts else []
    tampered = _tampered(lines + [f"TAMPER {n}" for n in notes])
    status, reason = _status(sup, verdicts[-1] if verdicts else None, lines, timed_out, limits)
    return status, reason[:_REASON_CAP], tampered


def _ended(end: dict, exc: str, limits: SandboxLimits) -> tuple[Status, str] | None:
    """How a process that did not exit 0 ended, or None when it did."""
    value = int(end.get("value", -1))
    if end.get("kind") == "signaled":
        if value == signal.SIGXCPU:
            return "timeout", f"CPU time limit of {limits.cpu_s:g} s exceeded"
        if value == signal.SIGXFSZ:
            return "failed", f"file size limit of {limits.file_size_bytes} bytes exceeded"
        return "failed", f"killed by {_signame(value)}" + (f" after {exc}" if exc else "")
    if value != 0:
        return "failed", exc or f"exited with code {value}"
    return None


def _status(sup: list[dict], verdict: dict | None, lines: list[str], timed_out: bool,
            limits: SandboxLimits) -> tuple[Status, str]:
    if timed_out:
        return "timeout", f"wall-clock limit of {limits.timeout_s:g} s exceeded"
    for event in sup:
        if event.get("event") == "error":
            return "error", str(event.get("message", "sandbox setup failed"))
    exits = [e for e in sup if e.get("event") == "exit"]
    if not exits:
        return "error", "sandbox worker ended the run without a status"
    exc = next((line[4:] for line in reversed(lines) if line.startswith("EXC ")), "")
    if verdict is None:  # the checker was killed (by the program, or the run's memory limit)
        return _ended(exits[-1], exc, limits) or ("failed", "the checks ended without a verdict")
    program = verdict.get("program") if isinstance(verdict.get("program"), dict) else {}
    if verdict.get("reason"):
        ended = _ended(program, "", limits)  # type: ignore[arg-type]
        return ended if ended and ended[0] == "timeout" else ("failed", str(verdict["reason"]))
    ended = _ended(program, exc, limits)  # type: ignore[arg-type]
    if ended:
        return ended
    if not verdict.get("completed"):
        return "failed", exc or "exited with code 0 before reaching the end of the program"
    if exits[-1].get("leftover"):
        return "failed", f"left {exits[-1]['leftover']} process(es) running after the program ended"
    return "passed", ""
