"""Harness side of one warm sandbox worker: start its zygote, hand it jobs, read the verdict.

The harness launches ``python -I -S`` on ``_child.zygote`` (isolated mode: no environment
variables, user site or script directory influence the sandbox process) once per worker, and
talks to it over five pipes: jobs on stdin (each job's tests after it, which the zygote passes
on unread to the run's checker); the programs' stdout and stderr; the control channel (written
by the program's process: tamper reports, the exception); the trusted status channel (written
only by the zygote, the run's init and the checker, which decides the verdict). A run ends when the zygote says ``done``: by then every process of the
run is dead, so whatever is left in the pipes belongs to it and is drained.
"""

from __future__ import annotations

import marshal
import os
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .capture import Stream, read_until_done
from .isolation import Mode
from .job import PROGRAM, Job
from .limits import SandboxLimits
from .result import ExecResult
from .verdict import decide, events

_CHILD_PATH = str(Path(__file__).resolve().parent)
_BOOT = f"import sys; sys.path.insert(0, {_CHILD_PATH!r}); from _child.zygote import main; main()"
_CHANNEL_CAP = 64 << 10
_START_TIMEOUT_S = 60.0
_GRACE_S = 2.0  # after the deadline: time for the zygote to kill the run and say done
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "USER": "sandbox",
    "LOGNAME": "sandbox",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def site_paths() -> list[str]:
    """site-packages for the program, added without running .pth files (faster, no side effects)."""
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def interpreter_paths() -> list[str]:
    """The folder of the harness's interpreter link and its ``pyvenv.cfg``, as the harness sees them.

    The zygote starts with ``-S``, so inside it ``sys.prefix`` is the base installation, not a
    virtualenv: without these, a program that starts ``sys.executable`` by path (a venv's
    ``bin/python3``) would find neither the link nor the venv. Only these two, not the whole
    prefix: a venv made in a private (0700) folder stays reachable, and nothing else of it shows.
    """
    paths = [os.path.dirname(os.path.abspath(sys.executable))]
    cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    return paths + [cfg] if os.path.isfile(cfg) else paths


def _frame(payload: dict) -> bytes:
    data = marshal.dumps(payload)
    return len(data).to_bytes(4, "little") + data


class WorkerError(RuntimeError):
    """The worker could not start or stopped answering; says nothing about a program."""


class Worker:
    """One zygote process and its pipes; runs one job at a time (not thread-safe)."""

    def __init__(self, mode: Mode, uid: int | None, gid: int | None) -> None:
        self.mode, self.uid, self.gid = mode, uid, gid
        self._seq = 0
        self._stage = tempfile.mkdtemp(prefix="dseval-root-") if mode == "namespaces" else ""
        ctl_r, ctl_w = os.pipe()
        sup_r, sup_w = os.pipe()
        cfg = {"mode": mode, "uid": uid, "gid": gid, "harness_pid": os.getpid(), "ctl_fd": ctl_w,
               "sup_fd": sup_w, "child_path": _CHILD_PATH, "site_paths": site_paths(),
               "interpreter_paths": interpreter_paths(), "env": dict(_ENV),
               "stage": self._stage}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(ctl_w, sup_w), start_new_session=True, close_fds=True,
                env={"PATH": _ENV["PATH"], "LANG": "C.UTF-8"},
            )
        except OSError as exc:
            self._cleanup_stage()
            raise WorkerError(f"could not start the sandbox interpreter: {exc}") from exc
        finally:
            os.close(ctl_w)
            os.close(sup_w)
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._streams = {
            "stdout": Stream(self._proc.stdout.fileno(), self._proc.stdout),
            "stderr": Stream(self._proc.stderr.fileno(), self._proc.stderr),
            "ctl": Stream(ctl_r), "sup": Stream(sup_r),
        }
        self._send(cfg)
        got = read_until_done(self._streams, {"stdout": 0, "stderr": 0, "ctl": 0, "sup": _CHANNEL_CAP},
                              "ready", time.monotonic() + _START_TIMEOUT_S, self._proc, None)
        ready = [e for e in events(got["sup"]) if e.get("event") == "ready"]
        if not ready:
            errors = [str(e.get("message")) for e in events(got["sup"]) if e.get("event") == "error"]
            self.close()
            raise WorkerError(errors[0] if errors else "the sandbox worker did not start "
                              f"(exit code {self._proc.returncode}): {bytes(got['stderr'])[-300:]!r}")
        self.protections: tuple[str, ...] = tuple(ready[0].get("protections", ()))

    def _send(self, payload: dict, tail: bytes = b"") -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(_frame(payload) + tail)
        self._proc.stdin.flush()

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def run(self, job: Job, limits: SandboxLimits) -> ExecResult:
        """Run one job; a worker that stops answering raises WorkerError (the caller restarts it)."""
        start = time.monotonic()
        self._seq += 1
        tests = job.tests.encode("utf-8", "surrogatepass")
        payload = {"seq": self._seq, "solution": job.program, "setup": job.setup, "tests_len": len(tests),
                   "names_as": None if job.shared_globals else PROGRAM,
                   "rlimits": limits.rlimits(), "memory_bytes": limits.memory_bytes,
                   "tmpfs_bytes": limits.tmpfs_bytes, "max_inodes": limits.max_inodes}
        try:
            self._send(payload, tests)
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"the sandbox worker is gone: {exc}") from exc
        caps = {"stdout": limits.max_output_bytes, "stderr": limits.max_output_bytes, "ctl": _CHANNEL_CAP,
                "sup": _CHANNEL_CAP}
        got = read_until_done(self._streams, caps, "done", start + limits.timeout_s, self._proc,
                              start + limits.timeout_s + _GRACE_S)
        if got.timed_out_hard:
            self.close()
            raise WorkerError("the sandbox worker did not end a run after its deadline")
        sup = events(bytes(got["sup"]))
        status, reason, tampered = decide(sup, bytes(got["ctl"]), got.timed_out, limits)
        armed = tuple(str(e.get("protection")) for e in sup if e.get("event") == "armed")
        return ExecResult(status, reason, _decode(got, "stdout", limits), _decode(got, "stderr", limits),
                          round(time.monotonic() - start, 4), tampered, self.protections + armed)

    def close(self) -> None:
        """End the zygote (closing its job pipe), kill it if it lingers, remove its stage dir."""
        proc = self._proc
        if proc.returncode is None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(timeout=_GRACE_S)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, 9)
                except ProcessLookupError:
                    pass
                proc.wait()
        for stream in self._streams.values():
            stream.close()
        self._cleanup_stage()

    def _cleanup_stage(self) -> None:
        if self._stage:
            try:
                os.rmdir(self._stage)
            except OSError:
                pass


def _decode(got, name: str, limits: SandboxLimits) -> str:
    text = bytes(got[name]).decode("utf-8", "replace")
    if got.overflowed.get(name):
        text += f"\n[dseval sandbox: output cut at {limits.max_output_bytes} bytes]"
    return text
