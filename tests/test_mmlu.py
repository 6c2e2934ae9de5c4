"""MMLU prompts from the real data, character for character, and scoring against fakes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import load_task
from dseval.task import PromptContext, get_task
from dseval.tasks.mmlu import CATEGORIES, SUBJECTS
from fake_model import FakeBackend, prefers

from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.runner import evaluate

BASE = PromptContext(shots=5, chat=False, seed=0, samples=1, render_chat=lambda m: "")

# Hand-checked against data/mmlu/dev/abstract_algebra_dev.csv and the first test row.
ABSTRACT_ALGEBRA_0 = (
    "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
    "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are "
    "subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: B\n\n"
    "Statement 1 | Every element of a group generates a cyclic subgroup of the group. Statement 2 | The symmetric "
    "group S_10 has 10 elements.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: C\n\n"
    "Statement 1| Every function from a finite set onto itself must be one to one. Statement 2 | Every subgroup of "
    "an abelian group is abelian.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: A\n\n"
    "Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n"
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
)


@pytest.fixture(scope="module")
def mmlu(data_dir: Path):
    return load_task("mmlu", data_dir)


def test_counts_and_ids(mmlu) -> None:
    task, docs = mmlu
    assert len(docs) == 14042
    assert docs[0].id == "mmlu/test/0" and docs[-1].id == "mmlu/test/14041"
    assert {d.fields["subject"] for d in docs} == set(SUBJECTS)
    assert sum(len(s) for s in CATEGORIES.values()) == 57


def test_five_shot_prompt_exact(mmlu) -> None:
    task, docs = mmlu
    prompt, requests = task.build(docs[0], BASE)
    assert prompt == ABSTRACT_ALGEBRA_0
    assert [r.continuation for r in requests] == [" A", " B", " C", " D"]
    assert all(r.context == prompt for r in requests)


def test_question_stripped_choices_kept(mmlu) -> None:
    task, docs = mmlu
    zero = PromptContext(shots=0, chat=False, seed=0, samples=1, render_chat=lambda m: "")
    prompt, _ = task.build(docs[1105], zero)  # college_mathematics: a choice with a leading space
    assert prompt.endswith("\nC. Neither (a) nor (b).\nD.  Both (a) and (b).\nAnswer:")
    prompt, _ = task.build(docs[2447], zero)  # formal_logic: question with surrounding whitespace
    assert prompt.startswith("The following are multiple choice questions (with answers) about formal logic.\n\nUse the following key")
    assert "\n(~B • E) ⊃ D\nA. " in prompt


def test_chat_prompt_uses_template(mmlu) -> None:
    task, docs = mmlu
    chat = PromptContext(shots=0, chat=True, seed=0, samples=1, render_chat=lambda m: f"<U>{m[-1]['content']}<A>")
    prompt, requests = task.build(docs[0], chat)
    assert prompt.startswith("<U>The following are") and prompt.endswith("Answer:<A>")
    assert [r.continuation for r in requests] == ["A", "B", "C", "D"]


def test_gold_model_scores_100(tmp_path: Path, data_dir: Path, mmlu) -> None:
    task, docs = mmlu
    gold = {}
    for doc in docs:
        prompt, _ = task.build(doc, BASE)
        gold[prompt] = "ABCD"[doc.target]
    backend = FakeBackend(lambda r: 0.0 if r.continuation.strip() == gold[r.context] else -3.0)
    config = RunConfig(tasks=("mmlu",), model="fake:gold", out=tmp_path / "run", limit=20, data_dir=str(data_dir))
    summary = evaluate(config, backend)["tasks"]["mmlu"]
    assert summary["n"] == 57 * 20
    assert summary["metrics"]["acc"] == 1.0 and summary["metrics"]["acc_macro"] == 1.0
    assert summary["metrics"]["acc/category/STEM"] == 1.0
    assert len(backend.calls) == 1, "the whole request list goes to the backend in one call"


def test_always_a_scores_share_of_a(tmp_path: Path, data_dir: Path, mmlu) -> None:
    _, docs = mmlu
    config = RunConfig(tasks=("mmlu",), model="fake:A", out=tmp_path / "run", data_dir=str(data_dir))
    summary = evaluate(config, FakeBackend(prefers("A")))["tasks"]["mmlu"]
    share = Counter(d.target for d in docs)[0] / len(docs)
    assert summary["metrics"]["acc"] == pytest.approx(share, abs=1e-12)
    assert summary["headline"] == "acc" and summary["n"] == 14042
    per_subject = [v for k, v in summary["metrics"].items() if k.startswith("acc/subject/")]
    assert len(per_subject) == 57
    assert summary["metrics"]["acc_macro"] == pytest.approx(sum(per_subject) / 57)
    assert 0 < summary["stderr"]["acc"] < 0.01
