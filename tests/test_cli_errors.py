"""Bad input: one clear line naming the culprit, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def dseval(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TESTS / "fake_cli.py"), *args], capture_output=True, text=True, timeout=300, env=env
    )


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_unknown_task(tmp_path: Path) -> None:
    assert_user_error(dseval("run", "mmlx", "--model", "fake:hash", "--out", str(tmp_path)), "unknown task 'mmlx'", "mmlu")


def test_unknown_model_spec(tmp_path: Path, data_dir: Path) -> None:
    proc = dseval("run", "mmlu", "--model", "nosuch:thing", "--out", str(tmp_path), "--data-dir", str(data_dir))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "nosuch" in proc.stderr


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_bad_limit(tmp_path: Path, limit: str) -> None:
    assert_user_error(dseval("run", "mmlu", "--model", "fake:hash", "--out", str(tmp_path), "--limit", limit), "--limit")


def test_missing_data(tmp_path: Path) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DSEVAL_DATA_DIR"}
    proc = dseval("run", "mmlu", "--model", "fake:hash", "--out", str(tmp_path / "o"), "--data-dir", str(empty), env=env)
    assert_user_error(proc, "missing data", str(empty / "mmlu"))
    proc = dseval("run", "mmlu", "--model", "fake:hash", "--out", str(tmp_path / "o"), env=env)
    assert_user_error(proc, "--data-dir")


def test_malformed_row_names_file_and_line(tmp_path: Path, data_dir: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_dir / "mmlu", data / "mmlu")
    path = data / "mmlu" / "test" / "anatomy_test.csv"
    rows = path.read_bytes().split(b"\r\n") if b"\r\n" in path.read_bytes() else path.read_bytes().split(b"\n")
    rows[2] = b"a question,with,too,few"
    path.write_bytes(b"\n".join(rows))
    proc = dseval("run", "mmlu", "--model", "fake:hash", "--out", str(tmp_path / "o"), "--data-dir", str(data))
    assert_user_error(proc, f"{path}:3", "expected 6 columns")


def test_unwritable_output(tmp_path: Path, data_dir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = dseval("run", "mmlu", "--model", "fake:hash", "--out", str(blocker / "run"), "--data-dir", str(data_dir))
    assert_user_error(proc, "not writable", str(blocker / "run"))


def test_unknown_id(tmp_path: Path, data_dir: Path) -> None:
    proc = dseval("run", "mmlu", "--model", "fake:hash", "--out", str(tmp_path), "--data-dir", str(data_dir), "--ids", "mmlu/test/999999")
    assert_user_error(proc, "mmlu/test/999999")


def test_ids_runs_only_named_docs(tmp_path: Path, data_dir: Path) -> None:
    proc = dseval("run", "mmlu", "--model", "fake:hash", "--out", str(tmp_path), "--data-dir", str(data_dir), "--ids", "mmlu/test/5,mmlu/test/7000")
    assert proc.returncode == 0, proc.stderr
    ids = [line.split('"id": "')[1].split('"')[0] for line in (tmp_path / "mmlu" / "samples.jsonl").read_text().splitlines()]
    assert sorted(ids) == ["mmlu/test/5", "mmlu/test/7000"]


def test_unknown_prefill_attention(tmp_path: Path, data_dir: Path) -> None:
    proc = dseval("run", "mmlu", "--model", "tiny", "--limit", "1", "--out", str(tmp_path), "--data-dir", str(data_dir),
                  "--prefill-attention", "fp16")
    assert_user_error(proc, "--prefill-attention must be one of", "fp8", "'fp16'")


def test_bad_prefill_chunk(tmp_path: Path, data_dir: Path) -> None:
    proc = dseval("run", "mmlu", "--model", "tiny", "--limit", "1", "--out", str(tmp_path), "--data-dir", str(data_dir),
                  "--max-num-batched-tokens", "0")
    assert_user_error(proc, "model options: engine field 'max_num_batched_tokens' must be >= 1, got 0")


def test_fp8_prefill_attention_on_a_model_it_cannot_run(tmp_path: Path, data_dir: Path) -> None:
    """The tiny preset's 8-wide heads are below the FP8 kernel's tiles: refused at start."""
    proc = dseval("run", "mmlu", "--model", "tiny", "--limit", "1", "--out", str(tmp_path), "--data-dir", str(data_dir),
                  "--prefill-attention", "fp8")
    assert_user_error(proc, "--prefill-attention fp8 cannot run model 'tiny'", "qk_nope_head_dim=8")
