"""The results store: run.json, per-task samples.jsonl, summary.json in a run folder.

Crash safety is the point of this module. Samples are appended one JSON line at a time and
flushed to disk as each finishes, so ``kill -9`` loses at most the requests in flight. On
restart the store reads back what is there, drops a torn final line (a write cut off by the
kill), and reports which ids are done; the runner computes only the rest. summary.json and
run.json are written to a temporary file and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dseval.errors import UserError
from dseval.records import Sample


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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

    @property
    def run_file(self) -> Path:
        return self.root / "run.json"

    @property
    def summary_file(self) -> Path:
        return self.root / "summary.json"

    def samples_file(self, task: str) -> Path:
        return self.root / task / "samples.jsonl"

    def read_run(self) -> dict[str, Any] | None:
        if not self.run_file.exists():
            return None
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{self.run_file}:{err.lineno}: not valid JSON ({err.msg})") from err

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
        tmp = main.with_name(main.name + ".tmp")
        tmp.unlink(missing_ok=True)
        with SampleWriter(tmp) as writer:
            writer.write(sorted(samples, key=lambda s: s.index))
        tmp.replace(main)

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
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")

    def write(self, samples: list[Sample]) -> None:
        if not samples:
            return
        self._handle.write("".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in samples))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
