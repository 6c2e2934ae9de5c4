"""Leaderboard rendering and the regression check, on runs written by the real runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_model import FakeBackend, hashed_score, prefers

from dseval.compare import compare_runs
from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.leaderboard import render, score_frame
from dseval.runner import evaluate
from dseval.task import PromptContext, get_task

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    task = get_task("mmlu")
    ctx = PromptContext(shots=5, chat=False, seed=0, samples=1, render_chat=lambda m: "")
    gold = {task.build(doc, ctx)[0]: "ABCD"[doc.target] for doc in task.load(DataSource(data_dir))}
    out = {}
    for name, scorer in (("hash", hashed_score), ("always-a", prefers("A")), ("gold", lambda r: -float(r.continuation.strip() != gold[r.context]))):
        config = RunConfig(tasks=("mmlu",), model=f"fake:{name}", out=root / name, limit=10, data_dir=str(data_dir))
        evaluate(config, FakeBackend(scorer))
        out[name] = root / name
    return out


def headline(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["tasks"]["mmlu"]["metrics"]["acc"]


def test_markdown_bolds_the_best(runs) -> None:
    text = render(score_frame([runs["hash"], runs["always-a"]], ["H", "A"]), "md")
    h, a = 100 * headline(runs["hash"]), 100 * headline(runs["always-a"])
    assert h != a
    row = [line for line in text.splitlines() if line.startswith("| mmlu")][0]
    best, worst = (h, a) if h > a else (a, h)
    assert f"**{best:.1f}**" in row and f"| {worst:.1f}" in row
    assert text.splitlines()[0] == "| Benchmark | Metric | H | A |"


@pytest.mark.parametrize("fmt,marker", [("html", "font-weight: bold"), ("latex", "\\textbf{"), ("csv", "benchmark,metric,H,A")])
def test_other_formats(runs, fmt: str, marker: str) -> None:
    assert marker in render(score_frame([runs["hash"], runs["always-a"]], ["H", "A"]), fmt)


def test_same_run_is_no_regression(runs) -> None:
    [result] = compare_runs(runs["hash"], runs["hash"])
    assert result.diff == 0 and not result.regression and result.paired_n == 570


def test_drop_is_flagged_and_exits_1(runs) -> None:
    better, worse = runs["gold"], runs["hash"]
    [result] = compare_runs(better, worse)
    assert result.regression and result.z < -1.96
    assert not compare_runs(worse, better)[0].regression, "an improvement is not a regression"
    assert not compare_runs(better, worse, min_drop=100)[0].regression
    proc = subprocess.run([sys.executable, str(TESTS / "fake_cli.py"), "compare", str(better), str(worse)], capture_output=True, text=True)
    assert proc.returncode == 1 and "DROP" in proc.stdout
    proc = subprocess.run([sys.executable, str(TESTS / "fake_cli.py"), "compare", str(better), str(better)], capture_output=True, text=True)
    assert proc.returncode == 0


def test_missing_run_is_a_user_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(TESTS / "fake_cli.py"), "leaderboard", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and "nope not found" in proc.stderr
