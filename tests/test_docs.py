"""The examples of docs/add-a-task.md and docs/add-a-backend.md run as written."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

import dseval.backends.registry as registry
import dseval.task as task_registry
from dseval.backends.base import BackendOptions
from dseval.config import RunConfig
from dseval.runner import evaluate, rescore, select_docs
from dseval.store import RunStore

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(page: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), re.DOTALL)


def run_example(page: str) -> dict[str, Any]:
    """Execute the page's Python block as a module of its own; its names."""
    [code] = blocks(page, "python")
    namespace: dict[str, Any] = {"__name__": page.removesuffix(".md").replace("-", "_")}
    exec(compile(code, str(DOCS / page), "exec"), namespace)
    return namespace


def test_add_a_task_example_runs_and_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task_registry.all_tasks()
    monkeypatch.setattr(task_registry, "_REGISTRY", dict(task_registry._REGISTRY))
    example = run_example("add-a-task.md")
    data = tmp_path / "data" / "arith"
    data.mkdir(parents=True)
    rows = [{"id": 0, "question": "What is 2 + 3?", "answer": "5"}, {"id": 1, "question": "What is 7 + 8?", "answer": "15"},
            {"id": 2, "question": "What is 1 + 1?", "answer": "2"}]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    replay = tmp_path / "answers.jsonl"
    answers = [" 5", " 15\nQuestion: What is 9 + 9?", " 3"]  # right, right despite an ignored stop string, wrong
    replay.write_text("".join(json.dumps({"id": f"arith/test/{i}", "output": a}) + "\n" for i, a in enumerate(answers)))
    out = tmp_path / "run"
    config = RunConfig(tasks=("arith",), model=f"replay:{replay}", out=out, data_dir=str(tmp_path / "data"))
    summary = evaluate(config)
    assert isinstance(task_registry.get_task("arith"), example["Arith"])
    assert summary["tasks"]["arith"]["metrics"]["acc"] == pytest.approx(2 / 3)
    assert rescore(RunStore(out)) == summary
    [entry] = tomllib.loads(blocks("add-a-task.md", "toml")[0])["project"]["entry-points"]["dseval.tasks"].values()
    assert entry.endswith(".arith")


def test_add_a_backend_example_runs_through_the_runner(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import load_task

    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    example = run_example("add-a-backend.md")
    backend = registry.load_backend("fixed:A", BackendOptions())
    assert isinstance(backend, example["FixedAnswer"]) and "fixed" in registry.backend_kinds()
    config = RunConfig(tasks=("mmlu",), model="fixed:A", out=tmp_path / "run", limit=2, data_dir=str(data_dir))
    summary = evaluate(config)
    golds = [doc.target for doc in select_docs(load_task("mmlu", data_dir)[1], 2, None)]
    assert 0 < sum(g == 0 for g in golds) < len(golds)  # "always A" is right on some, not all
    assert summary["tasks"]["mmlu"]["metrics"]["acc"] == pytest.approx(sum(g == 0 for g in golds) / len(golds))
    [entry] = tomllib.loads(blocks("add-a-backend.md", "toml")[0])["project"]["entry-points"]["dseval.backends"].items()
    assert entry[0] == "fixed" and entry[1].endswith(":FixedAnswer")
