"""Shared fixtures: where the real benchmark data lives (../shared/data beside the checkout)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Kernel tests run Triton's CPU interpreter. The variable must be set before anything imports
# triton (torch does, and so does the engine through its kernels), or kernels and their
# @triton.jit helpers are built in different modes; the kernel test modules setting it at
# collection was too late once a module collected before them imported the engine.
os.environ["TRITON_INTERPRET"] = "1"

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def _data_dir() -> Path:
    return Path(os.environ.get("DSEVAL_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _data_dir()
    if not path.is_dir():
        pytest.skip(f"benchmark data not found at {path}")
    return path


def load_task(name: str, data_dir: Path):
    """A registered task and its docs from the data folder (tests share this instead of
    repeating the two steps in every module)."""
    from dseval.data import DataSource
    from dseval.task import get_task

    task = get_task(name)
    return task, task.load(DataSource(data_dir))


def replay_run(tmp_path: Path, task: str, records: list[dict], data_dir: Path, *extra: str) -> dict:
    """``dseval run TASK --model replay:FILE`` in a subprocess on saved outputs; the task's
    entry of summary.json.
    Gold answers sent this way check the whole path: prompts, requests, scoring, aggregation."""
    import json
    import subprocess

    replay = tmp_path / f"{task}-replay.jsonl"
    replay.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / f"{task}-run"
    cmd = [sys.executable, "-m", "dseval", "run", task, "--model", f"replay:{replay}", "--data-dir", str(data_dir), "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "summary.json").read_text())["tasks"][task]


def namespaced_sandbox(limits, workers: int = 2):
    """A ``Sandbox`` with namespace isolation, or a skip where the machine has none (CI has it:
    root and unshare); the attack tests mean nothing under the fallback."""
    from dseval.sandbox import Sandbox

    sb = Sandbox(limits, workers=workers)
    if sb.isolation != "namespaces":
        pytest.skip(f"namespace isolation unavailable here: {sb.isolation_note}")
    return sb
