"""Read a run's pipes with per-stream caps while enforcing its deadline.

Why caps while reading: a program printing 1 GB must cost neither 1 GB of harness memory nor
the seconds of CPU to drain it, so once stdout or stderr passes its cap the run is stopped.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

_GRACE_S = 2.0  # time the supervisor gets to kill its tree after SIGTERM before we SIGKILL it


@dataclass
class Captured:
    data: dict[int, bytearray] = field(default_factory=dict)
    stopped: str | None = None  # "timeout" or "output" when the harness stopped the run


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the supervisor's group; P1 dies with it (same group + death signal), and so the pid ns.

    Only while the supervisor is unreaped: its zombie pins the pid, so the group id cannot have
    been recycled. Once reaped, its tree is already gone (it waits for its child before exiting).
    """
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # supervisor + init: pid-ns teardown follows
    except ProcessLookupError:
        pass


def collect(proc: subprocess.Popen, caps: dict[int, int], output_fds: set[int], deadline: float) -> Captured:
    """Read every fd in ``caps`` to EOF; stop the run at ``deadline`` or on output overflow."""
    out = Captured(data={fd: bytearray() for fd in caps})
    sel = selectors.DefaultSelector()
    for fd in caps:
        sel.register(fd, selectors.EVENT_READ)
    term_at: float | None = None
    killed = False

    def stop(why: str) -> None:
        nonlocal term_at
        if out.stopped is None:
            out.stopped = why
            term_at = time.monotonic()
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                stop("timeout")
            if term_at is not None and not killed and now >= term_at + _GRACE_S:
                kill_group(proc)
                killed = True
            if killed and now >= term_at + 3 * _GRACE_S:
                break  # something outside our reach holds a pipe open; give up on it
            limit = deadline if term_at is None else term_at + (3 if killed else 1) * _GRACE_S
            for key, _ in sel.select(timeout=max(0.0, min(limit - now, 0.5))):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = out.data[key.fd]
                room = caps[key.fd] - len(buf)
                buf += chunk[: max(room, 0)]
                if len(chunk) > room and key.fd in output_fds:
                    stop("output")
    finally:
        sel.close()
    try:
        proc.wait(timeout=_GRACE_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
    return out
