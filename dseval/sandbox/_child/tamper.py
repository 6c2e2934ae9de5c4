"""Tamper evidence: what a program did that an honest solution has no need for.

Evidence only: the tests run in another process (``runner``, ``remote``), so nothing here
guards the verdict; it tells a reader that a program went looking for something. An audit
hook in the program's process reports ``TAMPER <reason>`` lines on the control channel for
introspection an honest solution does not use: frames (``sys._getframe``,
``sys._current_frames``, a traceback's or generator's frame), tracing and profiling hooks,
``gc`` object walks, raw memory through ``ctypes`` or ``/proc/*/mem``; the standard library's
own harmless uses (``namedtuple`` and ``TypeVar`` asking for their caller's module name) are
recognised by code object and let through. The checker adds a note of its own when the tests
compare a program object that is not data (``remote.Remote``).

Why report instead of block: the official checkers let all of this pass, so blocking would
break parity; the harness counts flagged passes and ``strict`` scoring fails them.
"""

from __future__ import annotations

import collections
import sys
import typing
from collections.abc import Callable

Report = Callable[[str], None]
_EVENTS = {"sys._getframe": "frame access", "sys._current_frames": "frame access", "sys.settrace": "tracing",
           "sys.setprofile": "profiling", "gc.get_objects": "gc walk", "gc.get_referrers": "gc walk",
           "gc.get_referents": "gc walk", "ctypes.string_at": "ctypes memory read",
           "ctypes.wstring_at": "ctypes memory read", "ctypes.cdata": "ctypes memory access",
           "ctypes.cdata/buffer": "ctypes memory access", "ctypes.dlsym": "ctypes foreign call",
           "ctypes.PyObj_FromPtr": "ctypes object access"}
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})


def audit_hook(report: Report) -> tuple[Callable[[str, tuple], None], Callable[[], None]]:
    """(hook, disarm); ``report`` is called once per kind of event. ``disarm`` is for the
    runner's own failure traceback, which walks frames after the verdict is already a failure."""
    seen: set[str] = set()
    benign = {collections.namedtuple.__code__, typing._caller.__code__}  # type: ignore[attr-defined]
    getframe, busy = sys._getframe, [False]

    def flag(why: str) -> None:
        if why not in seen:
            seen.add(why)
            report(why)

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        why = _EVENTS.get(event)
        if why == "frame access":
            busy[0] = True
            try:
                if getframe(1).f_code in benign:
                    return
            finally:
                busy[0] = False
        elif event == "object.__getattr__" and args[1] in _FRAME_ATTRS:
            why = "frame access"
        elif event == "open" and isinstance(args[0], str) and args[0].startswith("/proc/") \
                and args[0].rsplit("/", 1)[-1] in ("mem", "maps", "pagemap"):
            why = "process memory read"
        if why:
            flag(f"{why} ({event})")

    def disarm() -> None:
        busy[0] = True

    return hook, disarm
