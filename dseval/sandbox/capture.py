"""Read a worker's pipes for one run: per-stream caps, the run's deadline, the end marker.

Why discard past the cap instead of stopping the run: the official checkers swallow a
program's output, so a correct program that prints a lot passes there and must pass here;
what we keep is capped so a program printing 1 GB costs no harness memory.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

_CHUNK = 1 << 16


class Stream:
    """A non-blocking read end of a pipe (optionally owned by a file object)."""

    def __init__(self, fd: int, owner: object | None = None) -> None:
        self.fd, self._owner = fd, owner
        os.set_blocking(fd, False)

    def close(self) -> None:
        if self._owner is not None:
            self._owner.close()  # type: ignore[attr-defined]
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


@dataclass
class Captured:
    data: dict[str, bytearray]
    overflowed: dict[str, bool] = field(default_factory=dict)
    timed_out: bool = False  # the run's deadline passed and the run was killed
    timed_out_hard: bool = False  # the worker did not confirm the kill in time

    def __getitem__(self, name: str) -> bytearray:
        return self.data[name]


def _drain(stream: Stream, name: str, out: Captured, cap: int) -> bool:
    """Read what is available now; False at end of file."""
    while True:
        try:
            chunk = os.read(stream.fd, _CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        buf = out.data[name]
        room = cap - len(buf)
        if room > 0:
            buf += chunk[:room]
        if len(chunk) > room:
            out.overflowed[name] = True


def read_until_done(streams: dict[str, Stream], caps: dict[str, int], end_event: str, deadline: float,
                    proc: subprocess.Popen, hard_deadline: float | None) -> Captured:
    """Collect every stream until the status channel carries ``end_event``.

    At ``deadline`` the worker is asked (SIGUSR1) to kill the run; with ``hard_deadline``
    None the wait simply ends there (used while a worker starts).
    """
    out = Captured(data={name: bytearray() for name in streams})
    marker = f"'event': '{end_event}'".encode()
    sel = selectors.DefaultSelector()
    for name, stream in streams.items():
        sel.register(stream.fd, selectors.EVENT_READ, name)
    try:
        while True:
            if marker in out.data["sup"]:
                break
            now = time.monotonic()
            if now >= deadline and not out.timed_out:
                if hard_deadline is None:
                    break
                out.timed_out = True
                try:
                    proc.send_signal(signal.SIGUSR1)
                except ProcessLookupError:
                    pass
            if hard_deadline is not None and now >= hard_deadline:
                out.timed_out_hard = True
                break
            limit = hard_deadline if out.timed_out else deadline
            ready = sel.select(timeout=max(0.0, min((limit or now) - now, 0.5)))
            for key, _ in ready:
                name = key.data
                if not _drain(streams[name], name, out, caps[name]):
                    sel.unregister(key.fd)
                    if name == "sup":
                        return out  # the worker is gone
    finally:
        sel.close()
    for name, stream in streams.items():  # every writer of this run is dead: take the rest
        _drain(stream, name, out, caps[name])
    return out
