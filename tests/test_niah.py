"""Needle-in-a-haystack: prompt lengths, needle placement, scoring and the heatmap."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from dseval.backends.base import ModelBackend
from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.niah import parse_length, write_report
from dseval.requests import GenerateRequest, GenerateResult
from dseval.runner import evaluate
from dseval.store import RunStore
from dseval.task import PromptContext
from dseval.tasks.niah import NeedleInAHaystack

BASE = PromptContext(shots=0, chat=False, seed=0, samples=1, render_chat=lambda m: "")


class FirstHalfReader(ModelBackend):
    """Finds the needle only when it sits in the first half of the prompt."""

    def generate(self, requests: Sequence[GenerateRequest], on_result=None) -> list[GenerateResult]:
        results = []
        for i, request in enumerate(requests):
            found = re.search(r"vault is (\d+)\.", request.prompt)
            text = f" {found.group(1)}." if found and found.start() <= len(request.prompt) / 2 else " 1234567."
            results.append(GenerateResult(text))
            if on_result:
                on_result(i, results[-1])
        return results

    def loglikelihood(self, requests, on_result=None):
        raise NotImplementedError


@pytest.fixture(scope="module")
def task(data_dir: Path) -> NeedleInAHaystack:
    task = NeedleInAHaystack(lengths=(2048, 8192), depths=(0, 25, 50, 75, 100))
    task.docs = task.load(DataSource(data_dir))
    return task


def test_parse_length() -> None:
    assert (parse_length("4k"), parse_length("128K"), parse_length("3000")) == (4096, 131072, 3000)


def test_prompts_fill_the_length_and_place_the_needle(task: NeedleInAHaystack) -> None:
    positions = {}
    for doc in task.docs:
        prompt, [request] = task.build(doc, BASE)
        tokens = len(task.tokenizer.encode(prompt, add_special_tokens=False).ids)
        length = doc.fields["length"]
        assert length - 128 <= tokens <= length, (doc.id, tokens)
        assert prompt.count("secret code of the") == 3  # needle, question, answer prefix
        assert "\n" in request.stop and request.max_tokens >= 16
        positions[doc.id] = prompt.index("Remember this:") / prompt.index("\n\nQuestion:")  # depth within the haystack
    for length in (2048, 8192):
        depth_order = [positions[f"niah/{length}/{d}"] for d in (0, 25, 50, 75, 100)]
        assert depth_order == sorted(depth_order) and depth_order[0] < 0.02 and depth_order[-1] > 0.95
        assert abs(positions[f"niah/{length}/50"] - 0.5) < 0.05


def test_same_cell_same_prompt(task: NeedleInAHaystack, data_dir: Path) -> None:
    again = NeedleInAHaystack(lengths=(2048,), depths=(50,))
    doc = again.load(DataSource(data_dir))[0]
    assert again.build(doc, BASE)[0] == task.build(next(d for d in task.docs if d.id == doc.id), BASE)[0]


def test_sweep_grid_and_heatmap(task: NeedleInAHaystack, tmp_path: Path, data_dir: Path) -> None:
    config = RunConfig(tasks=("niah",), model="first-half", out=tmp_path / "run", data_dir=str(data_dir))
    summary = evaluate(config, FirstHalfReader(), tasks=[NeedleInAHaystack(task.lengths, task.depths)])
    assert summary["tasks"]["niah"]["metrics"]["acc"] == pytest.approx(6 / 10)  # depths 0, 25, 50 of 2 lengths
    table = write_report(RunStore(tmp_path / "run"), "test")
    assert table["depths"] == [0, 25, 50, 75, 100] and table["lengths"] == [2048, 8192]
    assert [row[0] for row in table["acc"]] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert json.loads((tmp_path / "run" / "niah.json").read_text()) == table
    assert (tmp_path / "run" / "niah.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
