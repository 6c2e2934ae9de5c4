"""Data parallelism under torchrun with gloo: the files equal a single process's, and a run
interrupted under one replica count resumes under another."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dseval.store import LOCK_NAME

TESTS = Path(__file__).parent


def launch(nproc: int, out: Path, data_dir: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(TESTS / "fake_cli.py")]
    args = ["run", "mmlu", "--model", "fake:hash", "--out", str(out), "--limit", "3", "--data-dir", str(data_dir), "--dp", str(nproc), *extra]
    return subprocess.Popen(command + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)


def finished(out: Path) -> tuple[bytes, dict]:
    return (out / "mmlu" / "samples.jsonl").read_bytes(), json.loads((out / "summary.json").read_text())


def test_dp2_writes_the_same_files_as_dp1(tmp_path: Path, data_dir: Path) -> None:
    one, two = tmp_path / "dp1", tmp_path / "dp2"
    proc = launch(1, one, data_dir)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    proc = launch(2, two, data_dir)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    assert finished(one) == finished(two)
    assert not list((two / "mmlu").glob("samples.part*")), "shards are merged away"


def test_a_replica_that_reads_the_finished_samples_late_still_computes_its_share(tmp_path: Path, data_dir: Path) -> None:
    """Each replica splits the list of docs without a sample, which it reads from disk. One that
    read it after another had started writing saw a shorter list and split it differently,
    leaving docs to nobody; the run must still give the single-process files."""
    one, two = tmp_path / "dp1", tmp_path / "dp2"
    assert launch(1, one, data_dir).wait(timeout=300) == 0
    proc = launch(2, two, data_dir, env={**os.environ, "FAKE_READ_DELAY_S": "3"})
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    assert finished(one) == finished(two)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (torchrun starts each rank in a session of its
    own, so killing the launcher's process group leaves the ranks running)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it at once, as a machine failure would."""
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def wait_for_lock_release(path: Path, timeout_s: float = 60) -> None:
    """The launcher is reaped at once, but a killed rank holds the run folder's lock until the
    kernel has finished tearing it down: a resume started in that window is refused as a second
    writer, rightly."""
    deadline = time.monotonic() + timeout_s
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{path} still locked {timeout_s} s after the kill"
                time.sleep(0.05)


def test_interrupted_dp2_resumes_with_dp1(tmp_path: Path, data_dir: Path) -> None:
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert launch(1, reference, data_dir).wait(timeout=300) == 0
    slow = {**os.environ, "FAKE_DELAY_S": "0.01"}
    proc = launch(2, out, data_dir, env=slow)
    parts = out / "mmlu"
    deadline = time.monotonic() + 300  # a loaded machine starts torchrun slowly
    while time.monotonic() < deadline and sum(len(p.read_bytes().splitlines()) for p in parts.glob("samples.part*")) < 30:
        time.sleep(0.05)
    kill_tree(proc.pid)  # the launcher and both ranks
    proc.wait()
    wait_for_lock_release(out / LOCK_NAME)
    shard_lines = sum(len(p.read_bytes().splitlines()) for p in parts.glob("samples.part*"))
    assert 30 <= shard_lines < 171
    resumed = launch(1, out, data_dir)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert finished(out) == finished(reference)
