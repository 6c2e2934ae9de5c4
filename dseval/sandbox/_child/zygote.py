"""P0: a warm, already-isolated worker that forks one process tree per program.

Started once per worker slot by the harness (``python -I -S``), it reads its configuration
(a ``marshal``-ed dict) from stdin, builds what every run shares, then serves jobs: each job is
a 4-byte length and a ``marshal``-ed dict on stdin (program, setup, limits, the tests' length),
then the tests' bytes, so neither appears in any argv. It never runs program code, and it never
reads the tests: once the run's processes exist it moves them with ``os.splice`` from its stdin
to a pipe that only the run's checker reads (``runner``), so no later program forked from here
can find them in its memory.

Why a warm worker: a new interpreter, a new network namespace and the allowlisted root cost
more than the programs themselves; built once, each run pays for three forks, a fresh
mount/pid/ipc namespace, a tmpfs and its cgroup.

Namespace mode, once: new mount, network and UTS namespaces, the allowlisted root
(``rootfs.build``), the modules the runner and the tests use imported. Per job::

    P0 zygote ─ A (new pid/mount/ipc ns, run cgroup, fresh /tmp) ─ P1 init (pid 1) ─ P2 checker ─ P3 program

On the deadline the harness sends SIGUSR1; the zygote passes it to A, which SIGKILLs P1 and
waits for it: P1's death takes every process of the run's pid namespace with it, and the wait
returns only when they are all gone. Fallback mode:
P0 forks the checker directly and sweeps its uid afterwards.

Lifetime: P0 carries PR_SET_PDEATHSIG=SIGKILL tied to the harness thread that started it, A
and P1 tie theirs to their parents, so if the harness dies the whole tree goes.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` would import enum (~6 ms per run)
import importlib
import marshal
import os
import shutil
import sys
import tempfile

from . import cgroup, init, linux, rootfs, runner, sweep
from .status import report, wait_status

_ONCE_FLAGS = linux.CLONE_NEWNS | linux.CLONE_NEWNET | linux.CLONE_NEWUTS
_RUN_FLAGS = linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWIPC
#: Modules HumanEval's and MBPP's programs and checks import.
PRELOAD = ("math", "cmath", "random", "copy", "string", "re", "collections", "itertools", "functools",
           "operator", "heapq", "bisect")


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return b""
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _pass_tests(length: int, out_fd: int) -> None:
    """Move ``length`` bytes of tests from stdin to the run's pipe without reading them here;
    what a run that died early did not take goes to /dev/null, keeping the job stream in step."""
    left = length
    try:
        while left:
            moved = os.splice(0, out_fd, left)
            if not moved:
                os._exit(0)  # the harness is gone
            left -= moved
    except BrokenPipeError:
        pass
    finally:
        os.close(out_fd)
    if left:
        sink = os.open(os.devnull, os.O_WRONLY)
        try:
            while left:
                moved = os.splice(0, sink, left)
                if not moved:
                    os._exit(0)
                left -= moved
        finally:
            os.close(sink)


def _start(cfg: dict) -> list[str]:
    """Shared setup; returns the protections in force for every run of this worker."""
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    linux.prctl(linux.PR_SET_DUMPABLE, 0)  # no program of the same uid may read its fds or memory
    if os.getppid() != cfg["harness_pid"]:
        os._exit(71)  # the harness died before we armed the death signal
    for name in PRELOAD:  # imported once here rather than in every run
        importlib.import_module(name)
    import traceback  # noqa: F401 - failures print through it, after the root has changed

    if cfg["mode"] != "namespaces":
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)  # orphans of a killed checker come back here (sweep.reap)
        cfg["cgroups"] = []
        return ["rlimits", "uid"] if cfg["uid"] is not None else ["rlimits"]
    cfg["cgroups"] = cgroup.parents()
    cgroup.sweep_stale(cfg["cgroups"])
    linux.unshare(_ONCE_FLAGS)
    linux.sethostname("sandbox")
    needed = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
              *cfg["interpreter_paths"], *cfg["site_paths"]]
    cfg["stashed"] = rootfs.build(cfg["stage"], needed, cfg["uid"], cfg["gid"])
    protections = ["rlimits", "uid", "namespaces", "fs-allowlist", "tmpfs-inode-cap"]
    kinds = {kind for kind, _ in cfg["cgroups"]}
    return protections + [f"cgroup-{c}" for c in ("memory", "pids") if c in kinds or "v2" in kinds]


def _serve_namespaces(cfg: dict, job: dict, ctl_fd: int, sup_fd: int, current: list[int], tests_w: int) -> int:
    """One run in namespace mode; returns A's wait status."""
    dirs = cgroup.create(cfg["cgroups"], f"dseval-{os.getpid()}-{job['seq']}", job["memory_bytes"],
                         job["rlimits"]["nproc"][0]) if cfg["cgroups"] else []
    try:
        pid = os.fork()
        if pid == 0:
            p1: list[int] = []
            # Stop = kill init and keep waiting: its wait returns only once the kernel has
            # killed every process of the run's pid namespace, so nothing of this run can
            # still write to the pipes when the zygote reports "done".
            signal.signal(signal.SIGUSR1, lambda *_: os.kill(p1[0], signal.SIGKILL) if p1 else os._exit(1))
            os.close(tests_w)  # only the zygote writes the tests, before any program line runs
            try:
                linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
                linux.unshare(_RUN_FLAGS)
                cgroup.join(dirs)
                rootfs.per_run(job["uid"], job["gid"], job["tmpfs_bytes"], job["max_inodes"], cfg["stashed"])
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # until p1 is known
                child = os.fork()
                if child == 0:
                    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
                    init.run(job, ctl_fd, sup_fd)
                p1.append(child)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
                _, status = os.waitpid(child, 0)
                os._exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 1)
            except BaseException as exc:  # noqa: BLE001 - reported as an "error" result
                report(sup_fd, event="error", message=f"run setup: {exc}")
                os._exit(70)
        current.append(pid)
        _finish_job(job, tests_w)
        _, status = os.waitpid(pid, 0)
        current.clear()
        return status
    finally:
        cgroup.remove(dirs)


def _finish_job(job: dict, tests_w: int) -> None:
    """In the zygote, once the run's first process exists: hand over the tests."""
    if job["tests_fd"] >= 0:
        os.close(job["tests_fd"])
    _pass_tests(job["tests_len"], tests_w)


def _serve_fallback(job: dict, ctl_fd: int, sup_fd: int, current: list[int], tests_w: int) -> int:
    job["workdir"] = tempfile.mkdtemp(prefix="dseval-sbx-")
    try:
        if job["uid"] is not None:
            os.chown(job["workdir"], job["uid"], job["gid"])
        pid = os.fork()
        if pid == 0:
            os.close(tests_w)
            runner.run(job, ctl_fd, sup_fd)
        current.append(pid)
        _finish_job(job, tests_w)
        _, status = os.waitpid(pid, 0)
        current.clear()
        report(sup_fd, event="exit", leftover=sweep.sweep(job["uid"], pid), **wait_status(status))
        return status
    finally:
        shutil.rmtree(job["workdir"], ignore_errors=True)


def main() -> None:
    cfg = marshal.loads(_read_exact(0, int.from_bytes(_read_exact(0, 4), "little")))
    ctl_fd, sup_fd = cfg["ctl_fd"], cfg["sup_fd"]
    current: list[int] = []

    def kill_run(signum: int, frame: object) -> None:
        if current:
            try:  # A kills the run's init and waits for the namespace to empty; fallback: kill the runner
                os.kill(current[0], signal.SIGUSR1 if cfg["mode"] == "namespaces" else signal.SIGKILL)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGUSR1, kill_run)
    try:
        protections = _start(cfg)
    except Exception as exc:  # noqa: BLE001 - reported to the harness as an "error" result
        report(sup_fd, event="error", message=f"worker setup: {exc}")
        os._exit(70)
    report(sup_fd, event="ready", protections=protections)
    namespaces = cfg["mode"] == "namespaces"
    while True:
        head = _read_exact(0, 4)
        if not head:
            os._exit(0)  # the harness closed the job pipe: this worker is done
        job = marshal.loads(_read_exact(0, int.from_bytes(head, "little")))
        job.update(mode=cfg["mode"], uid=cfg["uid"], gid=cfg["gid"], child_path=cfg["child_path"],
                   site_paths=cfg["site_paths"], allow_spawn=False, env=dict(cfg["env"]))
        job["workdir"] = rootfs.WORKDIR
        job["tests_fd"], tests_w = os.pipe() if job["tests_len"] else (-1, os.open(os.devnull, os.O_WRONLY))
        if namespaces:
            _serve_namespaces(cfg, job, ctl_fd, sup_fd, current, tests_w)
        else:
            _serve_fallback(job, ctl_fd, sup_fd, current, tests_w)
        report(sup_fd, event="done", seq=job["seq"])
