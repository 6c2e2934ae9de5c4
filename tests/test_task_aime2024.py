"""AIME 2024: integer answers compared as integers, the report's protocol (16 samples at
temperature 0.7, mean pass@1 with its standard error), and gold answers replayed score 100%."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.runner import evaluate
from dseval.tasks.aime2024 import Aime2024, integer_answer
from dseval.task import PromptContext


def test_integer_answers() -> None:
    assert integer_answer("so the answer is $\\boxed{025}$.") == 25
    assert integer_answer("\\boxed{x = 7}") == 7
    assert integer_answer("The final answer is $204$. I hope it is correct.") == 204
    assert integer_answer("\\boxed{\\frac{3}{4}}") is None
    assert integer_answer("I think 113") is None  # no stated final answer


def test_protocol_is_sixteen_samples_at_temperature_0_7(data_dir: Path) -> None:
    task = Aime2024()
    doc = task.load(DataSource(data_dir))[0]
    ctx = PromptContext(shots=0, chat=True, seed=1, samples=1, render_chat=lambda m: "")
    _, requests = task.build(doc, ctx)
    assert len(requests) == 16 and {r.temperature for r in requests} == {0.7}
    assert len({r.seed for r in requests}) == 16
    assert requests[0].messages[-1]["content"].startswith(doc.data["problem"])


def replayed(tmp_path: Path, data_dir: Path, rows: list[dict], name: str) -> dict:
    replay = tmp_path / f"{name}.jsonl"
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = evaluate(RunConfig(tasks=("aime2024",), model=f"replay:{replay}", out=tmp_path / name, data_dir=str(data_dir)))
    return summary["tasks"]["aime2024"]


def test_gold_answers_replayed_score_100(tmp_path: Path, data_dir: Path) -> None:
    docs = Aime2024().load(DataSource(data_dir))
    rows = [{"id": d.id, "output": [f"Thus the answer is $\\boxed{{{d.target}}}$."] * 16} for d in docs]
    gold = replayed(tmp_path, data_dir, rows, "gold")
    assert gold["n"] == 30 and gold["metrics"]["pass@1"] == 1.0 and gold["stderr"]["pass@1"] == 0.0
    rows[0]["output"] = rows[0]["output"][:8] + ["\\boxed{1000}"] * 8  # one problem half right
    result = replayed(tmp_path, data_dir, rows, "half")
    assert result["n"] == 30
    assert result["metrics"]["pass@1"] == pytest.approx((29 + 0.5) / 30)
    # standard error over problems: 29 ones and one 0.5
    mean = 29.5 / 30
    variance = (29 * (1 - mean) ** 2 + (0.5 - mean) ** 2) / 29
    assert result["stderr"]["pass@1"] == pytest.approx((variance / 30) ** 0.5)
