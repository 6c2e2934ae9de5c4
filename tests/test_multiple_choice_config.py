"""Multiple-choice tasks declared by a config: MMLU declared in configs/tasks/mmlu_declared.toml
gives the built-in ``mmlu`` task's prompts and requests byte for byte (base and chat), and the
same loglikelihoods and scores on the tiny model; bad configs fail with one line naming the file
and field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, load_task
from dseval.task import PromptContext
from dseval.tasks.multiple_choice import declare

from dseval.backends.base import BackendOptions
from dseval.backends.registry import load_backend
from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.errors import UserError
from dseval.runner import evaluate

CHAT = PromptContext(shots=5, chat=True, seed=0, samples=1, render_chat=lambda m: f"<u>{m[-1]['content']}<a>")
BASE = PromptContext(shots=5, chat=False, seed=0, samples=1, render_chat=lambda m: "")


@pytest.fixture(scope="module")
def both(data_dir: Path):
    return load_task("mmlu", data_dir), load_task("mmlu_declared", data_dir)


def test_declared_mmlu_prompts_equal_the_builtin(both) -> None:
    (builtin, docs), (declared, declared_docs) = both
    assert len(declared_docs) == len(docs) == 14042
    assert [(d.target, d.group) for d in declared_docs] == [(d.target, d.group) for d in docs]
    for doc, twin in zip(docs[::7], declared_docs[::7], strict=True):
        for ctx in (BASE, CHAT):
            assert declared.build(twin, ctx) == builtin.build(doc, ctx), doc.id


def test_same_scores_on_the_tiny_model(tmp_path: Path, both, data_dir: Path) -> None:
    """A subset (every 700th question) through the runner on one tiny model: equal
    loglikelihoods per choice and equal accuracy."""
    torch.set_num_threads(1)
    (_, docs), _ = both
    picked = range(0, len(docs), 700)
    backend = load_backend("engine:tiny", BackendOptions(device="cpu", batch_size=16))
    try:
        summaries = {}
        for name in ("mmlu", "mmlu_declared"):
            ids = tuple(f"{name}/test/{i}" for i in picked)
            config = RunConfig(tasks=(name,), model="tiny", out=tmp_path / name, ids=ids, data_dir=str(data_dir))
            summaries[name] = evaluate(config, backend=backend)["tasks"][name]
    finally:
        backend.close()
    builtin, declared = summaries["mmlu"], summaries["mmlu_declared"]
    assert declared["n"] == builtin["n"] == len(picked)
    assert declared["metrics"]["acc"] == builtin["metrics"]["acc"]
    assert declared["metrics"]["acc_macro"] == builtin["metrics"]["acc_macro"]
    lines = {name: (tmp_path / name / name / "samples.jsonl").read_text().splitlines() for name in summaries}
    # the second run finds the first's prompts in the prefix cache, which changes only how the
    # work is chunked: equal to float tolerance, as the speed-settings test in test_engine_runtime
    for builtin_line, declared_line in zip(lines["mmlu"], lines["mmlu_declared"], strict=True):
        assert json.loads(declared_line)["loglikelihoods"] == pytest.approx(json.loads(builtin_line)["loglikelihoods"], abs=1e-4)


def test_user_config_folder_and_errors(tmp_path: Path, data_dir: Path) -> None:
    """A config from $DSEVAL_TASK_CONFIGS (JSON, choices as a list field, text answers) is
    listed and runnable by name; a config missing a field fails with its file and field."""
    (tmp_path / "quiz").mkdir()
    (tmp_path / "quiz" / "test.jsonl").write_text('{"q": "2+2?", "opts": ["3", "4"], "gold": "4"}\n')
    config = tmp_path / "configs" / "quiz.json"
    config.parent.mkdir()
    config.write_text('{"name": "quiz", "data": {"test": "quiz/test.jsonl"}, "doc": {"choices": "opts", "answer": "gold"},'
                      ' "prompt": {"question": "Q: {{ q }}\\nA:", "continuation": " {{ choice }}"}}')
    env = {**os.environ, "PYTHONPATH": str(REPO), "DSEVAL_TASK_CONFIGS": str(config.parent)}
    listed = subprocess.run([sys.executable, "-m", "dseval", "tasks"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and "quiz" in listed.stdout
    task = declare(config)()
    (doc,) = task.load(DataSource(tmp_path))
    prompt, requests = task.build(doc, PromptContext(shots=0, chat=False, seed=0, samples=1, render_chat=lambda m: ""))
    assert prompt == "Q: 2+2?\nA:" and [r.continuation for r in requests] == [" 3", " 4"] and doc.target == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[data]\ntest = "x.csv"\n[doc]\nchoices = ["A"]\n[prompt]\nquestion = "{{ q }}"\n')
    with pytest.raises(UserError, match=r"bad.toml \[doc\]: field 'answer' is required"):
        declare(bad)
