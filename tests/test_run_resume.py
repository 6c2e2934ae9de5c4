"""Crash safety: a run killed with SIGKILL and restarted equals an uninterrupted run, and
`dseval score` reproduces summary.json from the samples alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_model import FakeBackend

from dseval.config import RunConfig
from dseval.runner import evaluate
from dseval.store import SampleWriter

TESTS = Path(__file__).parent


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TESTS / "fake_cli.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def run_args(out: Path, data_dir: Path) -> list[str]:
    return ["run", "mmlu", "--model", "fake:hash", "--out", str(out), "--limit", "4", "--data-dir", str(data_dir)]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, data_dir: Path) -> None:
    reference = tmp_path / "reference"
    assert cli(*run_args(reference, data_dir)).wait(timeout=300) == 0

    interrupted = tmp_path / "interrupted"
    samples = interrupted / "mmlu" / "samples.jsonl"
    slow = {**os.environ, "FAKE_DELAY_S": "0.01"}  # 228 docs x 4 requests x 10 ms
    proc = cli(*run_args(interrupted, data_dir), env=slow)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not samples.exists() or len(samples.read_bytes().splitlines()) < 40):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(samples.read_bytes().splitlines())
    assert 40 <= written < 228, "the kill must land in the middle of the run"
    assert not (interrupted / "summary.json").exists()

    intact = samples.read_bytes().splitlines()[: written - 1]  # the last line may be torn
    before_kill = {r["id"]: r for r in map(json.loads, intact)}
    resumed = cli(*run_args(interrupted, data_dir))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()

    records = lines(samples)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 228, "no sample lost or duplicated"
    assert [r["index"] for r in records] == list(range(228)), "the finished file is in reference order"
    after = {r["id"]: r for r in records}
    assert all(after[i] == r for i, r in before_kill.items()), "finished samples were kept as they were"
    assert json.loads((interrupted / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())
    assert samples.read_bytes() == (reference / "mmlu" / "samples.jsonl").read_bytes()


def test_ctrl_c_right_after_a_write_writes_no_sample_twice(tmp_path: Path, data_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C that lands just after samples reached the file, before the run recorded that they
    did: the flush on the way out must not append them again."""
    write = SampleWriter.write

    def write_then_interrupt(self: SampleWriter, samples: list) -> None:
        write(self, samples)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SampleWriter, "write", write_then_interrupt)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluate(RunConfig(tasks=["mmlu"], model="fake:hash", out=out, limit=4, data_dir=str(data_dir)),
                 backend=FakeBackend(delay_s=0.001))
    ids = [r["id"] for r in lines(out / "mmlu" / "samples.jsonl")]
    assert 0 < len(ids) < 228 and len(ids) == len(set(ids)), "each finished sample written once"


def test_torn_last_line_is_recomputed(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    assert cli(*run_args(out, data_dir)).wait(timeout=300) == 0
    samples = out / "mmlu" / "samples.jsonl"
    full = samples.read_bytes()
    samples.write_bytes(full[: len(full) - 40])  # a write cut off mid-line, as a kill leaves it
    assert cli(*run_args(out, data_dir)).wait(timeout=300) == 0
    assert sorted(samples.read_bytes().splitlines()) == sorted(full.splitlines())


def test_score_reproduces_summary(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    assert cli(*run_args(out, data_dir)).wait(timeout=300) == 0
    before = json.loads((out / "summary.json").read_text())
    (out / "summary.json").unlink()
    proc = cli("score", str(out))
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert json.loads((out / "summary.json").read_text()) == before


def test_resume_with_other_arguments_is_refused(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    assert cli(*run_args(out, data_dir)).wait(timeout=300) == 0
    proc = cli("run", "mmlu", "--model", "fake:hash", "--out", str(out), "--limit", "5", "--data-dir", str(data_dir))
    assert proc.wait(timeout=300) == 2
    err = proc.stderr.read().decode()
    assert "limit=4" in err and "Traceback" not in err


def test_prefill_attention_is_part_of_a_runs_identity(tmp_path: Path, data_dir: Path) -> None:
    """A run.json written before the field existed means the default (bf16) attention: it
    resumes with the default and is refused with fp8, which would mix numerics."""
    out = tmp_path / "run"
    assert cli(*run_args(out, data_dir)).wait(timeout=300) == 0
    run_file = out / "run.json"
    record = json.loads(run_file.read_text())
    assert record["config"].pop("prefill_attention") == "auto"
    run_file.write_text(json.dumps(record))
    assert cli(*run_args(out, data_dir)).wait(timeout=300) == 0
    proc = cli(*run_args(out, data_dir), "--prefill-attention", "fp8")
    assert proc.wait(timeout=300) == 2
    err = proc.stderr.read().decode()
    assert "prefill_attention='auto'" in err and "Traceback" not in err
