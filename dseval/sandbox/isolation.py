"""Which isolation this machine allows, and the per-run unprivileged uids.

Namespace mode (root, Linux, unshare + mount_setattr + pivot_root available): new mount,
network, pid, ipc and uts namespaces; an allowlisted, read-only root (``_child.rootfs``);
private tmpfs working directory; loopback down; pid-namespace teardown kills every process
of the run; a throwaway uid; a seccomp filter; per-run cgroups where writable. We use plain
syscalls instead of bubblewrap so CI needs no extra package.

Fallback mode (anything else, or ``DSEVAL_SANDBOX_ISOLATION=fallback``): new session, rlimits,
throwaway uid when root, sockets and process spawning refused by an audit hook, cleanup by uid
(root) or process group. Weaker: the host filesystem is visible (read-only only through file
permissions) and ctypes can bypass the hook. A warning is logged once when it is chosen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Literal

Mode = Literal["namespaces", "fallback"]
ENV_VAR = "DSEVAL_SANDBOX_ISOLATION"
_log = logging.getLogger(__name__)
_lock = threading.Lock()
_detected: tuple[Mode, str] | None = None

_UID_BASE = 1 << 30
_SLOTS = 256


def _platform_gap() -> str:
    """Empty string when namespace mode may work here, else why not."""
    if not sys.platform.startswith("linux"):
        return f"namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"namespaces need root (running as uid {os.geteuid()})"
    return ""


def resolve_mode(probe: Callable[[], str]) -> tuple[Mode, str]:
    """(mode, note): probed once per process; the note explains a fallback.

    ``probe`` runs one trivial program in namespace mode and returns '' when it passed, else
    why not (passed in by the caller, which knows how to run one).
    """
    global _detected
    wanted = os.environ.get(ENV_VAR, "auto").strip().lower()
    if wanted not in ("auto", "namespaces", "fallback"):
        raise ValueError(f"{ENV_VAR} must be auto, namespaces or fallback, got {wanted!r}")
    if wanted == "fallback":
        return "fallback", f"forced by {ENV_VAR}=fallback"
    with _lock:
        if _detected is None:
            why = _platform_gap() or probe()
            _detected = ("namespaces", "") if not why else ("fallback", why)
            if why:
                _log.warning("dseval sandbox: namespace isolation unavailable (%s); using the weaker "
                             "fallback (rlimits, audit-hook socket refusal)", why)
    if wanted == "namespaces" and _detected[0] != "namespaces":
        raise RuntimeError(f"{ENV_VAR}=namespaces but namespace isolation is unavailable: {_detected[1]}")
    return _detected


class _UidSlots:
    """Process-wide pool of throwaway uids: base + (pid << 8) + slot.

    Why per slot and per process: RLIMIT_NPROC and the fallback kill-by-uid sweep are per uid,
    so two concurrent runs (in this process or another harness process) must never share one.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._free = list(range(_SLOTS))

    @contextlib.contextmanager
    def lease(self) -> Iterator[tuple[int | None, int | None]]:
        if os.geteuid() != 0:
            yield None, None
            return
        with self._cond:
            while not self._free:
                self._cond.wait()
            slot = self._free.pop()
        uid = _UID_BASE + (os.getpid() << 8) + slot
        try:
            yield uid, uid
        finally:
            with self._cond:
                self._free.append(slot)
                self._cond.notify()


_slots = _UidSlots()


def uid_lease() -> contextlib.AbstractContextManager[tuple[int | None, int | None]]:
    """Lease a uid/gid pair for one run ((None, None) when not root: no privilege drop)."""
    return _slots.lease()


def uid_range() -> range:
    """The uids this process may hand out (tests use it to look for stray processes)."""
    base = _UID_BASE + (os.getpid() << 8)
    return range(base, base + _SLOTS)
