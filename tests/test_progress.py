"""A task's progress bar: generations that all end together still move it from the first step,
so its ETA holds; answered docs count whole, and the tokens/s the engine reports reach it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.progress import Progress

from dseval.progress import Refresher
from dseval.records import Doc
from dseval.requests import GenerateRequest, GenerateResult, LoglikelihoodRequest, LoglikelihoodResult, Request
from dseval.runner import PreparedTask, _Collector


def collector(requests: list[list[Request]]) -> _Collector:
    docs = [Doc(id=f"d{i}", data={}, target=None) for i in range(len(requests))]
    prepared = PreparedTask(task=SimpleNamespace(name="t"), docs=docs, prompts=["p"] * len(docs), requests=requests,
                            chat=False)
    return _Collector(prepared, list(range(len(docs))), None)


def test_eta_holds_from_the_first_step_when_every_generation_ends_together() -> None:
    n, limit, rate = 8, 100, 10  # each request generates 10 tokens a second: all end at t = 10 s
    gen = collector([[GenerateRequest("p", max_tokens=limit)] for _ in range(n)])
    clock = [0.0]
    progress = Progress(get_time=lambda: clock[0], disable=True)
    bar = progress.add_task("gen", total=n)
    for t in range(1, 10):  # the refresher's updates, one a second here
        clock[0] = float(t)
        progress.update(bar, completed=gen.docs_done(generated=n * rate * t))
        if t >= 2:  # a rate needs two samples
            assert progress.tasks[0].time_remaining == pytest.approx(10 - t, abs=1), f"at {t} s"
    for i in range(n):
        gen.on_result(i, GenerateResult("x", num_tokens=limit, finish_reason="length"))
    assert gen.docs_done(generated=n * limit) == gen.answered_docs == n


def test_a_doc_that_stops_early_counts_whole_and_leaves_the_open_budget() -> None:
    gen = collector([[GenerateRequest("p", max_tokens=100)], [GenerateRequest("p", max_tokens=100)]])
    gen.on_result(0, GenerateResult("x", num_tokens=10, finish_reason="stop"))  # both made 10 tokens so far
    assert gen.docs_done(generated=20) == pytest.approx(1 + 10 / 100)
    assert gen.docs_done(generated=500) == 2, "never more than every doc"


def test_scoring_docs_count_when_all_their_answers_are_in() -> None:
    score = collector([[LoglikelihoodRequest("c", " A"), LoglikelihoodRequest("c", " B")] for _ in range(2)])
    for i in range(3):
        score.on_result(i, LoglikelihoodResult(-1.0, False, prompt_tokens=7))
    assert score.docs_done(generated=0) == score.answered_docs == 1
    assert score.answered_prompt_tokens == 21 and score.answered_tokens == 0


def test_refresher_updates_while_the_block_runs_and_once_at_its_end() -> None:
    calls: list[float] = []
    with Refresher(lambda: calls.append(time.monotonic()), interval=0.01):
        time.sleep(0.2)
    during = len(calls)
    time.sleep(0.05)
    assert during >= 3 and len(calls) == during, "updates while running, none after the block"
    assert not [t for t in threading.enumerate() if t.name == "dseval-progress"]

    def broken() -> None:
        raise RuntimeError("display")

    with Refresher(broken, interval=0.01):  # a display error never reaches the run
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "dseval-progress"]


def test_engine_run_shows_its_token_rate_one_line_per_task(tmp_path: Path, data_dir: Path) -> None:
    """Two tasks (the longer name widens the first column) in a log of 80 columns."""
    proc = subprocess.run([sys.executable, "-m", "dseval", "run", "math500", "mbpp_sanitized", "--model", "tiny",
                           "--device", "cpu", "--limit", "2", "--max-tokens", "4", "--out", str(tmp_path),
                           "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    for task in ("math500", "mbpp_sanitized"):
        shown = re.search(task + r" .*2/2\s+100%\s+([\d.]+) docs/s\s+([\d,]+) tok/s", proc.stderr)
        assert shown, proc.stderr
        assert float(shown.group(1)) > 0 and int(shown.group(2).replace(",", "")) > 0
