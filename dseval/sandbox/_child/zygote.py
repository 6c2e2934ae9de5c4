"""P0: entry point of every sandboxed run (``python -I -S``, started by the harness).

It reads the run's configuration (a ``marshal``-ed dict: no import needed, unlike json;
program text and completion token included) from stdin, so neither appears in any process's
argv; it builds the isolation, forks the program side, and on SIGTERM from the harness
(deadline or output limit) kills it. It never runs program code.

Lifetime chain: P0 and P1 carry PR_SET_PDEATHSIG=SIGKILL (P1 is trusted, so the program cannot
clear it), so if the harness dies, P0 dies, P1 dies and the pid namespace takes every program
process with it. The kernel ties the death signal to the harness *thread* that started P0;
the pool's threads live until all their runs have finished, so that is safe here.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` would import enum (~6 ms per run)
import marshal
import os
import sys

from . import init, linux, mounts, runner, sweep
from .status import report, wait_status

_NS_FLAGS = (
    linux.CLONE_NEWNS | linux.CLONE_NEWNET | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS | linux.CLONE_NEWPID
)


def _prepare(cfg: dict) -> None:
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != cfg["harness_pid"]:
        os._exit(71)  # the harness died before we armed the death signal
    if cfg["mode"] == "namespaces":
        linux.unshare(_NS_FLAGS)
        linux.sethostname("sandbox")
        needed = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable),
                  *cfg["site_paths"]]
        cfg["program_path"] = mounts.prepare(cfg["uid"], cfg["gid"], cfg["tmpfs_bytes"], cfg["program"], needed)
        cfg["workdir"] = mounts.WORKDIR
    else:
        cfg["program_path"] = os.path.join(cfg["workdir"], "prog.py")
        with open(cfg["program_path"], "w") as fh:
            fh.write(cfg["program"])
    cfg["env"].update(HOME=cfg["workdir"], TMPDIR=cfg["workdir"])


def main() -> None:
    cfg = marshal.loads(sys.stdin.buffer.read())
    ctl_fd, sup_fd = cfg["ctl_fd"], cfg["sup_fd"]
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    child: list[int] = []
    namespaces = cfg["mode"] == "namespaces"

    def stop(signum: int, frame: object) -> None:
        if not child:
            os._exit(72)
        if namespaces:
            os.kill(child[0], signal.SIGKILL)  # init of the pid ns: its death kills the whole ns
        else:
            sweep.sweep(cfg["uid"], child[0])

    signal.signal(signal.SIGTERM, stop)
    try:
        _prepare(cfg)
    except Exception as exc:  # noqa: BLE001 - reported to the harness as an "error" result
        report(sup_fd, event="error", message=f"supervisor setup: {exc}")
        os._exit(70)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        (init.run if namespaces else runner.run)(cfg, ctl_fd, sup_fd)
    child.append(pid)
    os.close(ctl_fd)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    _, status = os.waitpid(pid, 0)
    if namespaces:
        if os.WIFSIGNALED(status):
            report(sup_fd, event="killed", signal=os.WTERMSIG(status))
    else:
        report(sup_fd, event="exit", leftover=sweep.sweep(cfg["uid"], pid), **wait_status(status))
    os._exit(0)
