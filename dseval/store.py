"""The results store: run.json, per-task samples.jsonl, summary.json in a run folder.

Crash safety is the point of this module. Samples are appended one JSON line at a time and
flushed to disk as each finishes, so ``kill -9`` loses at most the requests in flight. On
restart the store reads back what is there, drops a torn final line (a write cut off by the
kill), and reports which ids are done; the runner computes only the rest. summary.json and
run.json are written to a temporary file and renamed, so a reader never sees half a file.

One writer at a time: a run holds an exclusive lock on the folder (:meth:`RunStore.lock`) for
its whole length, so two runs on one ``--out`` never interleave their samples. Temporary files
carry the writer's pid, so even a reader-writer race never shares one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dseval.errors import UserError
from dseval.records import Sample

LOCK_NAME = ".lock"


def temporary_name(path: Path) -> Path:
    """A sibling of ``path`` no other process writes (ranks and readers of one folder race)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn a failed write (read-only folder, full disk) into a one-line error naming the file;
    what was written before stays on disk."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}; free space or fix permissions, "
                        f"then run the same command again to resume") from err


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` via a temporary file and rename. NaN and Infinity are refused: they are
    not JSON, and a non-finite number in a result file is a bug upstream, not a result."""
    tmp = temporary_name(path)
    text = json.dumps(payload, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n"
    with disk_errors(path):
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class RunStore:
    """One run folder. Creating it checks that the folder is writable before any work starts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"  # per process: ranks probe at once
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise UserError(f"output folder {self.root} is not writable: {err.strerror or err}") from err

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder exclusively until the block ends (the kernel drops the lock when the
        process dies, so a killed run never leaves a stale one). A second writer fails at once,
        naming the holder."""
        path = self.root / LOCK_NAME
        with disk_errors(path):
            handle = path.open("a+", encoding="utf-8")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(f"{self.root} is in use by {holder}; wait for it to finish or choose another --out") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)}\n")
            handle.flush()
            yield
        finally:
            handle.close()

    @property
    def run_file(self) -> Path:
        return self.root / "run.json"

    @property
    def summary_file(self) -> Path:
        return self.root / "summary.json"

    def samples_file(self, task: str) -> Path:
        return self.root / task / "samples.jsonl"

    def read_run(self) -> dict[str, Any] | None:
        """run.json, checked for the fields a resume and a rescore read."""
        if not self.run_file.exists():
            return None
        run = self._read_json(self.run_file)
        if not isinstance(run, dict) or not isinstance(run.get("tasks"), dict):
            raise UserError(f"{self.run_file}: not a dseval run record (needs an object with a \"tasks\" object); "
                            f"restore it, or delete it to start the folder's run afresh")
        bad = [name for name, record in run["tasks"].items() if not isinstance(record, dict)]
        if bad:
            raise UserError(f"{self.run_file}: field tasks.{bad[0]} must be an object; restore the file or choose another --out")
        return run

    def _read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read {path}: {err}") from err

    def merge_summary(self, model: str, tasks: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json with ``tasks`` replaced and every other task's summary kept, so a
        run of some tasks into a folder leaves the others' results in place."""
        kept: dict[str, Any] = {}
        try:
            before = json.loads(self.summary_file.read_text(encoding="utf-8")) if self.summary_file.exists() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            before = {}  # derived data: an unreadable summary is replaced (`dseval score` rebuilds every task's)
        if isinstance(before, dict) and isinstance(before.get("tasks"), dict):
            kept = before["tasks"]
        summary = {"model": model, "tasks": {**kept, **tasks}}
        self.write_summary(summary)
        return summary

    def check_ids(self, task: str, known: set[str]) -> None:
        """Refuse samples whose id is no doc of this run's task: they would count as done work
        (a file copied from another run or edited by hand)."""
        for path in self.sample_files(task):
            if not path.exists():
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
                if line.strip():
                    sample_id = json.loads(line).get("id")
                    if sample_id not in known:
                        raise UserError(f"{path}:{number}: sample id {sample_id!r} is not a doc of task {task} in "
                                        f"this run; remove that line (or the file) and run again")

    def write_run(self, payload: dict[str, Any]) -> None:
        write_json_atomic(self.run_file, payload)

    def write_summary(self, payload: dict[str, Any]) -> None:
        write_json_atomic(self.summary_file, payload)

    def sample_files(self, task: str) -> list[Path]:
        """samples.jsonl and the shards data-parallel replicas write before they are merged."""
        main = self.samples_file(task)
        return [main, *sorted(main.parent.glob("samples.part*.jsonl"))]

    def load_samples(self, task: str, repair: bool = False) -> list[Sample]:
        """Samples already written for ``task`` (all shards), first occurrence of each id kept.

        A final line without its newline is the mark of a write cut off by a kill: with
        ``repair`` it is truncated away (it will be recomputed); otherwise it is an error.
        """
        samples: dict[str, Sample] = {}
        for path in self.sample_files(task):
            for sample in _read_samples(path, repair):
                samples.setdefault(sample.id, sample)
        return list(samples.values())

    def finalize(self, task: str) -> list[Sample]:
        """Merge every shard into one samples.jsonl in the task's reference order.

        Whatever the batching, resumption or replica count, the finished file is then the same.
        """
        samples = self.load_samples(task)
        self.rewrite(task, samples)
        for part in self.sample_files(task)[1:]:
            part.unlink()
        return sorted(samples, key=lambda s: s.index)

    def rewrite(self, task: str, samples: list[Sample]) -> None:
        """Replace samples.jsonl atomically with ``samples`` in reference order."""
        main = self.samples_file(task)
        tmp = temporary_name(main)
        try:
            with SampleWriter(tmp) as writer:
                writer.write(sorted(samples, key=lambda s: s.index))
            with disk_errors(main):
                tmp.replace(main)
        finally:
            tmp.unlink(missing_ok=True)

    def sample_writer(self, task: str, shard: int | None = None) -> SampleWriter:
        path = self.samples_file(task)
        return SampleWriter(path if shard is None else path.with_name(f"samples.part{shard}.jsonl"))


def _read_samples(path: Path, repair: bool) -> list[Sample]:
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if not repair:
            raise UserError(f"{path}: last line is incomplete (an interrupted run); resume it with `dseval run`")
        with path.open("r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    samples = []
    # split on "\n" only: str.splitlines() also breaks at \x85 and \u2028, which data text contains
    for number, line in enumerate(data.decode("utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            samples.append(Sample.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{path}:{number}: not a sample record ({err})") from err
    return samples


class SampleWriter:
    """Appends finished samples durably, one line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with disk_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = path.open("a", encoding="utf-8")

    def write(self, samples: list[Sample]) -> None:
        if not samples:
            return
        text = "".join(json.dumps(s.to_json(), ensure_ascii=False, allow_nan=False) + "\n" for s in samples)
        with disk_errors(self.path):
            self._handle.write(text)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
