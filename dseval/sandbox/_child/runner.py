"""P2: drop every privilege, run the program, then run the tests where it cannot reach them.

Order, and why:

1. The test code is parsed and instrumented (``tamper.compile_tests``) and the setup code
   compiled *before* the program runs, so a program that patches ``ast`` or ``compile``
   changes nothing. Neither exists as a file: the program is compiled from memory (as the
   official checkers ``exec`` a string), so there is no program file to parse for asserts.
2. The program runs as a module whose globals are a fresh dict without ``__name__``, exactly
   like the official checkers' ``exec(program, {})``: ``if __name__ == "__main__":`` blocks
   never run.
3. Before the checks: tracing and profiling hooks are cleared, ``builtins`` is restored from
   a copy taken before the program ran, and the modules the checks use are restored
   (``tamper.restore_modules``). The setup code (MBPP's imports and fixtures) runs in the
   program's globals, as the reference does; the tests run in a *copy* of them with their own
   built-ins: the program's functions see their own globals, never ``check`` or the asserts.
4. Only after the tests return does this process write ``PASS <token>`` to the control fd.
   The token lives only in this function's frame (not argv, not a file, not a global);
   reaching it takes frame, gc, ctypes or /proc memory access, which the audit hook reports
   on the same channel *before* the access happens, so such a pass is flagged ``tampered``.
"""

from __future__ import annotations

import builtins
import os
import resource
import sys

from . import guards, linux, seccomp, tamper
from .status import report

_RLIMITS = {
    "cpu": resource.RLIMIT_CPU,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
}
PROGRAM_FILENAME = "prog.py"  # shown in tracebacks; no such file exists


def _setup(job: dict, ctl_fd: int, sup_fd: int) -> None:
    """Everything that must hold before a single line of the program runs."""
    os.setsid()
    low, high = sorted((ctl_fd, sup_fd))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 16)
    for name, (soft, hard) in job["rlimits"].items():
        resource.setrlimit(_RLIMITS[name], (soft, hard))
    if job["mode"] != "namespaces":
        # Import what the fallback guard polices while still privileged, so the audit hook
        # (not an unreadable stdlib under a private home) is what refuses them.
        import socket  # noqa: F401
        import subprocess  # noqa: F401
    if job["uid"] is not None:
        os.setgroups([])
        os.setresgid(job["gid"], job["gid"], job["gid"])
        os.setresuid(job["uid"], job["uid"], job["uid"])
        if os.geteuid() == 0 or os.getegid() == 0:
            raise RuntimeError("privilege drop did not take effect")
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    # Re-armed after setresuid, which clears it; matters in fallback mode (no pid namespace).
    linux.prctl(linux.PR_SET_PDEATHSIG, 9)
    try:
        seccomp.install()
        report(sup_fd, event="armed", protection="seccomp")
    except OSError:
        pass  # recorded by its absence from the run's protections
    if job["mode"] != "namespaces":
        guards.install(job["allow_spawn"])
    os.chdir(job["workdir"])
    os.environ.clear()
    os.environ.update(job["env"], HOME=job["workdir"], TMPDIR=job["workdir"])
    sys.path[:] = [p for p in sys.path if p != job["child_path"]] + list(job["site_paths"])
    sys.argv[:] = [""]
    os.close(sup_fd)  # the trusted status channel is not the program's to write


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) raised before the end of the program"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.replace("\n", " ")[:300]


def _print_failure(exc: BaseException) -> None:
    try:
        import traceback  # only failures pay for it (it is a costly import)

        # Skip this module's own frame so the traceback shows only the program and the tests.
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        traceback.print_exception(type(exc), exc, tb)
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - the program may have broken sys.std*
        pass


def run(job: dict, ctl_fd: int, sup_fd: int) -> None:
    """Never returns into the caller: exits via SystemExit(0) (normal shutdown) or _exit."""
    write, exit_now, getpid, token = os.write, os._exit, os.getpid, job.pop("token")
    gettrace, settrace, getprofile, setprofile = sys.gettrace, sys.settrace, sys.getprofile, sys.setprofile
    my_pid = getpid()

    def flag(why: str) -> None:
        write(ctl_fd, f"\nTAMPER {why}\n".encode("utf-8", "replace"))

    try:
        tests = tamper.compile_tests(job["tests"], "<tests>") if job["tests"] else None
        setup = compile(job["setup"], "<setup>", "exec") if job["setup"] else None
        _setup(job, ctl_fd, sup_fd)
    except BaseException as exc:  # noqa: BLE001 - any setup failure means "could not sandbox"
        report(sup_fd, event="error", message=f"runner setup: {_reason(exc)}")
        exit_now(70)
    names = builtins.__dict__
    pristine = dict(names)
    modules = tamper.snapshot_modules()
    recorders = tamper.recorders(flag, job["trusted_ids"])
    for name in [m for m in sys.modules if m.split(".")[0] == "_child"]:
        del sys.modules[name]
    hook, disarm = tamper.audit_hook(flag)
    sys.addaudithook(hook)
    program_globals: dict = {}
    try:
        exec(compile(job["solution"], PROGRAM_FILENAME, "exec"), program_globals)  # noqa: S102 - sandboxed
        if gettrace() is not None:
            settrace(None)
        if getprofile() is not None:
            setprofile(None)
        names.clear()
        names.update(pristine)
        tamper.restore_modules(modules, flag)
        if setup is not None:
            exec(setup, program_globals)  # noqa: S102 - the task's own fixtures
        if tests is not None:
            test_globals = dict(program_globals)
            test_globals["__builtins__"] = dict(pristine)
            test_globals.update(recorders)
            tamper.threads_running(flag)
            exec(tests, test_globals)  # noqa: S102 - the task's own tests
            tamper.restore_modules(modules, flag)  # a program thread may have patched during the tests
    except BaseException as exc:  # noqa: BLE001 - the program's failure, reported as such
        disarm()
        _print_failure(exc)
        try:
            write(ctl_fd, f"\nEXC {_reason(exc)}\n".encode("utf-8", "replace"))
        finally:
            exit_now(1)
    if getpid() == my_pid:
        write(ctl_fd, f"\nPASS {token}\n".encode())
    _shutdown(exit_now)


def _shutdown(exit_now: object) -> None:
    """What a normal interpreter exit does (join threads, run atexit, flush), then _exit: this
    process is a fork of the worker, whose own cleanup code must not run here."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # type: ignore[attr-defined]
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - like the interpreter: exit status stays 0
        pass
    exit_now(0)  # type: ignore[operator]
