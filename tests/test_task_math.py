"""MATH-500 and MATH: data, the Minerva prompt character for character, chat prompt, sampling
fan-out, and end-to-end scoring of gold answers through ``dseval run --model replay:``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import load_task
from dseval.records import Sample
from dseval.task import PromptContext, get_task

from dseval.data import DataSource

BASE = PromptContext(shots=4, chat=False, seed=0, samples=1, render_chat=lambda m: "")
CHAT = PromptContext(shots=0, chat=True, seed=0, samples=1, render_chat=lambda m: f"<user>{m[-1]['content']}<assistant>")

# Hand-checked: the first and last exemplar boundaries of lm-evaluation-harness's minerva_math
# prompt, and the first MATH-500 problem as the open question.
PROMPT_START = "Problem:\nFind the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}\n\nSolution:\nThe expressions inside"
PROMPT_END = (
    "$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
    "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.\n\n"
    "Problem:\nConvert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your answer in the "
    "form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$\n\nSolution:"
)


@pytest.fixture(scope="module")
def math500(data_dir: Path):
    return load_task("math500", data_dir)


@pytest.fixture(scope="module")
def math_full(data_dir: Path):
    return load_task("math", data_dir)


def test_math500_data(math500) -> None:
    _, docs = math500
    assert len(docs) == 500
    assert docs[0].id == "test/precalculus/807.json" and docs[0].target == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert {d.fields["level"] for d in docs} == {1, 2, 3, 4, 5}
    assert len({d.fields["subject"] for d in docs}) == 7


def test_math_full_data(math_full) -> None:
    _, docs = math_full
    assert [d.id for d in docs[:2]] == ["math/test/0", "math/test/1"] and docs[-1].id == "math/test/4999"
    assert docs[0].target == "2" and docs[2].target == "\\dfrac{9}{7}"  # last \boxed of the solution
    subjects = Counter(d.fields["subject"] for d in docs)
    assert subjects == {"Algebra": 1187, "Intermediate Algebra": 903, "Prealgebra": 871, "Precalculus": 546,
                        "Number Theory": 540, "Geometry": 479, "Counting & Probability": 474}


def test_minerva_prompt_exact(math500) -> None:
    task, docs = math500
    prompt, requests = task.build(docs[0], BASE)
    assert prompt.startswith(PROMPT_START) and prompt.endswith(PROMPT_END)
    assert prompt.count("Problem:\n") == 5 and prompt.count("I hope it is correct.") == 4
    assert [(r.prompt, r.stop, r.temperature, r.doc_id) for r in requests] == [(prompt, ("Problem:",), 0.0, docs[0].id)]
    zero_shot, _ = task.build(docs[0], PromptContext(shots=0, chat=False, seed=0, samples=1, render_chat=lambda m: ""))
    assert zero_shot == "Problem:\n" + docs[0].data["problem"] + "\n\nSolution:"


def test_chat_prompt_asks_for_boxed_and_has_no_stop(math500) -> None:
    task, docs = math500
    prompt, requests = task.build(docs[0], CHAT)
    assert prompt == f"<user>{docs[0].data['problem']}\nPlease reason step by step, and put your final answer within \\boxed{{}}.<assistant>"
    assert requests[0].stop == () and requests[0].max_tokens >= 2048


def test_samples_fan_out_with_distinct_seeds(math500) -> None:
    task, docs = math500
    ctx = PromptContext(shots=4, chat=False, seed=7, samples=4, render_chat=lambda m: "", max_tokens=99)
    _, requests = task.build(docs[3], ctx)
    assert [r.sample_index for r in requests] == [0, 1, 2, 3]
    assert len({r.seed for r in requests}) == 4 and all(r.doc_id == docs[3].id for r in requests)
    assert all(r.temperature > 0 and r.max_tokens == 99 for r in requests)


def _samples(docs, outputs) -> list[Sample]:
    return [Sample(id=d.id, index=i, prompt="", target=d.target, fields=d.fields, outputs=o) for i, (d, o) in enumerate(zip(docs, outputs))]


def test_reference_solutions_score_100(math500) -> None:
    """Each problem's own worked solution, read as a model output, is judged correct."""
    task, docs = math500
    metrics = task.score(_samples(docs, [[d.data["solution"]] for d in docs]))
    assert [m["acc"] for m in metrics] == [1.0] * 500


def test_wrong_answers_score_0_and_samples_average(math500) -> None:
    task, docs = math500
    shifted = [[f"The final answer is ${docs[i - 1].target}$."] for i in range(len(docs))]
    wrong = sum(m["acc"] for m in task.score(_samples(docs, shifted)))
    assert wrong < 15  # a neighbour's answer is right only where two answers coincide
    gold, other = f"\\boxed{{{docs[0].target}}}", "\\boxed{17}"
    assert task.score(_samples(docs[:1], [[gold, other, gold, other]]))[0]["acc"] == 0.5


def _replay(tmp_path: Path, task: str, records: list[dict], data_dir: Path, *extra: str) -> dict:
    replay = tmp_path / f"{task}.jsonl"
    replay.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / f"run_{task}"
    cmd = [sys.executable, "-m", "dseval", "run", task, "--model", f"replay:{replay}", "--data-dir", str(data_dir), "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "summary.json").read_text())["tasks"][task]


def test_gold_answers_through_replay_score_100(tmp_path: Path, data_dir: Path, math500) -> None:
    _, docs = math500
    records = [{"id": d.id, "output": f"Some work.\nFinal Answer: The final answer is ${d.target}$. I hope it is correct."} for d in docs]
    summary = _replay(tmp_path, "math500", records, data_dir)
    assert summary["n"] == 500 and summary["metrics"]["acc"] == 1.0
    assert all(summary["metrics"][f"acc/level/{level}"] == 1.0 for level in range(1, 6))
    assert summary["metrics"]["acc/subject/Precalculus"] == 1.0


def test_chat_style_answers_through_replay(tmp_path: Path, data_dir: Path, math_full) -> None:
    """Full MATH: boxed gold answers score 1, a wrong boxed answer 0 (first 50 problems)."""
    _, docs = math_full
    records = [{"id": d.id, "output": f"Reasoning... so the answer is $\\boxed{{{d.target if i % 2 else 'wrong'}}}$."} for i, d in enumerate(docs[:50])]
    summary = _replay(tmp_path, "math", records, data_dir, "--limit", "50")
    assert summary["n"] == 50 and summary["metrics"]["acc"] == 0.5
