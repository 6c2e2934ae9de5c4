"""P2, the checker, and P3, the program: the tests run in a process the program cannot reach.

Order, and why:

1. The checker drops every privilege (throwaway uid, rlimits, seccomp, not dumpable: the
   program, of the same uid, can neither ptrace it nor read its ``/proc/<pid>/mem`` or fds),
   then forks the program's process. Only *after* that fork does it read the tests, from a
   pipe the zygote fills straight from the harness's (``os.splice``, so no process of the
   sandbox ever held the tests in memory before): the program's memory has never contained
   them, and the pipe's read end is closed in the program before its first line runs.
2. The program runs as a module whose globals are a fresh dict without ``__name__``, exactly
   like the official checkers' ``exec(program, {})``: ``if __name__ == "__main__":`` blocks
   never run. The setup code (MBPP's imports and fixtures) runs in its globals, as the
   reference does. Then it sends its names and answers the checker's questions
   (``remote.serve``). Tracing, frame, ``gc`` and ``ctypes`` access are reported as tamper
   evidence (``tamper``), but nothing the program does in its process can reach the checks.
3. The checker builds the tests' globals from the program's names (data as data, program
   objects as handles, modules as its own imports; merged into the tests' globals as the
   reference checkers share one namespace, or kept apart as one dict, ``Job.shared_globals``),
   runs the setup and the tests with its own pristine built-ins, closes the link, waits for
   the program to end (or kills it when the tests stopped waiting for an answer, e.g. at a
   per-test time limit), and writes the verdict on the trusted status channel, which the
   program's process never holds.
"""

from __future__ import annotations

import builtins
import os
import resource
import _signal as signal  # the C module, as in the zygote: `signal` imports enum, a cost in every run
import sys

from . import guards, linux, remote, seccomp, tamper
from .status import report, wait_status

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
    devnull = os.open(os.devnull, os.O_RDONLY)  # stdin was the zygote's job pipe
    os.dup2(devnull, 0)
    os.close(devnull)
    _keep_only(ctl_fd, sup_fd, job["tests_fd"])
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
    linux.prctl(linux.PR_SET_DUMPABLE, 0)  # the program (same uid) may not ptrace or read the checker
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


def _keep_only(*fds: int) -> None:
    """Close every descriptor above 2 except ``fds``."""
    low = 3
    for fd in sorted(f for f in fds if f >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


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
    """The checker (P2). Never returns into the caller: ends with _exit."""
    try:
        _setup(job, ctl_fd, sup_fd)
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        child = os.fork()
    except BaseException as exc:  # noqa: BLE001 - any setup failure means "could not sandbox"
        report(sup_fd, event="error", message=f"runner setup: {_reason(exc)}")
        os._exit(70)
    if child == 0:
        _keep_only(ctl_fd, req_r, resp_w)
        _program(job, ctl_fd, req_r, resp_w)
    os.close(req_r)
    os.close(resp_w)
    notes: list[str] = []
    link = remote.Link(req_w, resp_r, notes.append)
    try:
        completed, reason = _check(job, link)
    except BaseException as exc:  # noqa: BLE001 - the checker itself failed: says nothing about the program
        report(sup_fd, event="error", message=f"checker: {_reason(exc)}")
        os._exit(70)
    if link.busy:  # the checks gave up waiting for an answer (a per-test time limit): the verdict is in
        os.kill(child, signal.SIGKILL)
    os.close(req_w)
    os.close(resp_r)
    _, status = os.waitpid(child, 0)
    report(sup_fd, event="verdict", completed=completed, reason=reason, notes=notes, program=wait_status(status))
    os._exit(0)


def _check(job: dict, link: remote.Link) -> tuple[bool, str]:
    """(the program ran to its end, why the checks failed or ''): the tests, in this process."""
    tests_fd = job["tests_fd"]
    try:
        raw = remote.read_exact(tests_fd, job["tests_len"], "the tests were cut short") if tests_fd >= 0 else b""
        source = raw.decode("utf-8", "surrogatepass")
    finally:
        if tests_fd >= 0:
            os.close(tests_fd)
    try:
        names = link.names()
    except (remote.ProgramGone, ValueError):
        return False, ""  # the program failed (or left) before its end: its exit status says how
    try:
        test_globals = dict(names) if job["names_as"] is None else {job["names_as"]: names}
        # This process's own, untouched built-ins, even where a forged names message carries some.
        test_globals["__builtins__"] = builtins.__dict__
        if job["setup"]:
            exec(compile(job["setup"], "<setup>", "exec"), test_globals)  # noqa: S102 - the task's fixtures
        if source:
            exec(compile(source, "<tests>", "exec"), test_globals)  # noqa: S102 - the task's own tests
    except BaseException as exc:  # noqa: BLE001 - a failed check, reported as such
        _print_failure(exc)
        return True, _reason(exc)
    return True, ""


def _program(job: dict, ctl_fd: int, req_r: int, resp_w: int) -> None:
    """The program's process (P3): run it, then answer the checker. Never returns."""
    write, exit_now, getpid = os.write, os._exit, os.getpid
    my_pid = getpid()

    def flag(why: str) -> None:
        write(ctl_fd, f"\nTAMPER {why}\n".encode("utf-8", "replace"))

    for name in [m for m in sys.modules if m.split(".")[0] == "_child"]:
        del sys.modules[name]
    hook, disarm = tamper.audit_hook(flag)
    sys.addaudithook(hook)
    program_globals: dict = {}
    try:
        exec(compile(job["solution"], PROGRAM_FILENAME, "exec"), program_globals)  # noqa: S102 - sandboxed
        if job["setup"]:
            exec(compile(job["setup"], "<setup>", "exec"), program_globals)  # noqa: S102 - the task's own fixtures
    except BaseException as exc:  # noqa: BLE001 - the program's failure, reported as such
        disarm()
        _print_failure(exc)
        try:
            write(ctl_fd, f"\nEXC {_reason(exc)}\n".encode("utf-8", "replace"))
        finally:
            exit_now(1)
    if getpid() != my_pid:
        exit_now(0)  # a process the program forked reached the end: only the program itself answers
    try:
        # A job without tests or setup is its own check: the checker needs no names, only the end.
        remote.serve(program_globals if job["tests_len"] or job["setup"] else {}, req_r, resp_w)
    except BaseException:  # noqa: BLE001 - the link is gone; the checker already has its verdict
        exit_now(1)
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
