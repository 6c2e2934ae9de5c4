"""Shared fixtures: where the real benchmark data lives (../shared/data beside the checkout)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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
