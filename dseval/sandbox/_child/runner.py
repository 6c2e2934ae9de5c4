"""P2: drop every privilege, then run the program and prove it reached its end.

Completion proof: only after ``exec`` of the whole program returns normally does this module
write ``PASS <token>`` to the control fd. The token lives in this process's memory only (it
arrived on stdin, not argv or the program text), and the write uses a reference to
``os.write`` captured before the program ran, so ``os._exit(0)`` before the asserts, a patched
``sys.exit``/``builtins``/``os.write``, a silenced ``excepthook`` or a fake exit code cannot
produce it. Forked children of the program never write it (pid check). The token is removed
from the (gc-visible) config dict before the program starts. Known limit: code that inspects
this function's frame (``sys._getframe(1)``) or its own memory can still find it; an in-process
proof cannot rule that out, it only makes faking a pass a deliberate act.
"""

from __future__ import annotations

import os
import resource
import sys
import types

from . import guards, linux
from .status import report

_RLIMITS = {
    "cpu": resource.RLIMIT_CPU,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
}


def _setup(cfg: dict, ctl_fd: int, sup_fd: int) -> None:
    """Everything that must hold before a single line of the program runs."""
    os.setsid()
    low, high = sorted((ctl_fd, sup_fd))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 16)
    for name, (soft, hard) in cfg["rlimits"].items():
        resource.setrlimit(_RLIMITS[name], (soft, hard))
    if cfg["mode"] != "namespaces":
        # Import what the fallback guard polices while still privileged, so the audit hook
        # (not an unreadable stdlib under a private home) is what refuses them.
        import socket  # noqa: F401
        import subprocess  # noqa: F401
        import traceback  # noqa: F401
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        if os.geteuid() == 0 or os.getegid() == 0:
            raise RuntimeError("privilege drop did not take effect")
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    # Re-armed after setresuid, which clears it; matters in fallback mode (no pid namespace).
    linux.prctl(linux.PR_SET_PDEATHSIG, 9)
    if cfg["mode"] != "namespaces":
        guards.install(cfg["allow_spawn"])
    os.chdir(cfg["workdir"])
    os.environ.clear()
    os.environ.update(cfg["env"])
    sys.path[:] = [p for p in sys.path if p != cfg["child_path"]] + list(cfg["site_paths"])
    sys.argv[:] = [cfg["program_path"]]
    os.close(sup_fd)  # the trusted status channel is not the program's to write


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) raised before the end of the program"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.replace("\n", " ")[:500]


def run(cfg: dict, ctl_fd: int, sup_fd: int) -> None:
    """Never returns into the supervisor: exits via SystemExit(0) (normal shutdown) or _exit."""
    write, exit_now, getpid, token = os.write, os._exit, os.getpid, cfg.pop("token")
    my_pid = getpid()
    try:
        _setup(cfg, ctl_fd, sup_fd)
    except BaseException as exc:  # noqa: BLE001 - any setup failure means "could not sandbox"
        report(sup_fd, event="error", message=f"runner setup: {_reason(exc)}")
        exit_now(70)
    main = types.ModuleType("__main__")
    main.__file__ = cfg["program_path"]
    main.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    try:
        code = compile(cfg["program"], cfg["program_path"], "exec")
        exec(code, main.__dict__)  # noqa: S102 - this is the sandboxed program, by design
    except BaseException as exc:  # noqa: BLE001 - the program's failure, reported as such
        try:
            import traceback  # only failures pay for it (it is a costly import)

            # Skip this module's own frame so the traceback shows only the program.
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            traceback.print_exception(type(exc), exc, tb)
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - the program may have broken sys.std*
            pass
        try:
            write(ctl_fd, f"EXC {_reason(exc)}\n".encode("utf-8", "replace"))
        finally:
            exit_now(1)
    if getpid() == my_pid:
        write(ctl_fd, f"PASS {token}\n".encode())
    raise SystemExit(0)  # normal shutdown: joins threads, runs atexit, flushes stdio
