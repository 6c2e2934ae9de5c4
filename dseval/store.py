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
from dseval.tasks.base import Sample


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
            probe = self.root / ".write-test"
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

    def tasks_on_disk(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/samples.jsonl"))

    def load_samples(self, task: str, repair: bool = False) -> list[Sample]:
        """Samples already written for ``task``, first occurrence of each id kept.

        A final line without its newline is the mark of a write cut off by a kill: with
        ``repair`` it is truncated away (it will be recomputed); otherwise it is an error.
        """
        path = self.samples_file(task)
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
        samples: dict[str, Sample] = {}
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                sample = Sample.from_json(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UserError(f"{path}:{number}: not a sample record ({err})") from err
            samples.setdefault(sample.id, sample)
        return list(samples.values())

    def sample_writer(self, task: str) -> SampleWriter:
        return SampleWriter(self.samples_file(task))


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
