"""P1: pid 1 of the program's pid namespace.

Why a separate init instead of making the program pid 1: pid 1 ignores default-action signals
sent from inside its namespace and inherits every orphan, which would change how ordinary
programs behave. This init reaps orphans, reports how the program ended and how many of its
processes were still running, then exits, and the kernel kills everything left in the
namespace: daemons and "kill its parent" tricks cannot outlive the run.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` would import enum (~6 ms per run)
import os
import time

from . import linux, rootfs, runner, sweep
from .status import report, wait_status


def _alive_others() -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == "1":
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        count += state != b"Z"
    return count


def _leftover_processes() -> int:
    """Processes still running after the program ended (brief grace for ones already dying)."""
    left = 0
    for _ in range(3):
        sweep.reap()
        left = _alive_others()
        if left == 0:
            return 0
        time.sleep(0.02)
    return left


def run(job: dict, ctl_fd: int, sup_fd: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        rootfs.mount_proc()
    except OSError as exc:
        report(sup_fd, event="error", message=f"init setup: {exc}")
        os._exit(70)
    child = os.fork()
    if child == 0:
        runner.run(job, ctl_fd, sup_fd)
    os.close(ctl_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    while True:
        pid, status = os.wait()
        if pid == child:
            break
    report(sup_fd, event="exit", leftover=_leftover_processes(), **wait_status(status))
    os._exit(0)
