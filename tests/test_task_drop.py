"""DROP: data, the seeded 3-shot draw, both prompts, answer extraction, and gold answers
through ``dseval run --model replay:`` scoring EM = F1 = 1, with ``dseval score`` agreeing."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_task

from dseval.backends.base import ModelBackend
from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.records import Sample
from dseval.requests import GenerateResult
from dseval.runner import evaluate, rescore
from dseval.store import RunStore
from dseval.task import PromptContext, get_task
from dseval.tasks.drop import passage_of

BASE = PromptContext(shots=3, chat=False, seed=0, samples=1, render_chat=lambda m: "")
CHAT = PromptContext(shots=3, chat=True, seed=0, samples=1, render_chat=lambda m: m[-1]["content"])


@pytest.fixture(scope="module")
def drop(data_dir: Path):
    return load_task("drop", data_dir)


def test_data_and_ids(drop) -> None:
    _, docs = drop
    assert len(docs) == 9536 and docs[0].id == "drop/dev/0" and docs[-1].id == "drop/dev/9535"
    assert docs[1].target == ["Pakistanis and Filipinos", "Pakistani and Filipino"]


def test_shots_disjoint_from_own_passage_and_deterministic(drop, data_dir: Path) -> None:
    task, docs = drop
    for doc in docs[:2000]:
        shots = doc.data["shots"][:3]
        passages = {passage_of(docs[i].data["context"]) for i in shots}
        assert len(passages) == 3 and passage_of(doc.data["context"]) not in passages
    again = get_task("drop").load(DataSource(data_dir))
    assert [d.data["shots"] for d in again[:500]] == [d.data["shots"] for d in docs[:500]]
    reseeded = PromptContext(shots=3, chat=False, seed=99, samples=1, render_chat=lambda m: "")
    assert task.build(docs[5], reseeded)[0] == task.build(docs[5], BASE)[0], "--seed must not change the prompt"


def test_base_prompt_and_stop(drop) -> None:
    task, docs = drop
    prompt, requests = task.build(docs[0], BASE)
    shots = [docs[i].data for i in docs[0].data["shots"][:3]]
    assert prompt == "\n\n".join([s["context"] + s["completion"] for s in shots] + [docs[0].data["context"]])
    assert requests[0].stop == ("\n",), "never stop at '.', which would cut decimals like 74.3"


def test_chat_prompt_is_simple_evals_format(drop) -> None:
    task, docs = drop
    prompt, requests = task.build(docs[0], CHAT)
    shots = [docs[i].data for i in docs[0].data["shots"][:3]]
    expected = (
        "You will be asked to read a passage and answer a question. Some examples of passages and Q&A are provided below.\n\n# Examples"
        + "".join(f"\n---\n{s['context']} {s['completion']}\n" for s in shots)
        + f"\n# Your Task\n\n---\n{docs[0].data['context']} \n\n"
        + 'Think step by step, then write a line of the form "Answer: $ANSWER" at the end of your response.\n' + " " * 20
    )
    assert prompt == expected and requests[0].stop == ()


def _sample(doc, prompt: str, outputs: list[str], chat: bool = False) -> Sample:
    return Sample(id=doc.id, index=0, prompt=prompt, target=doc.target, fields=doc.fields, outputs=outputs, chat=chat)


def test_extraction_and_scoring(drop) -> None:
    task, docs = drop
    doc = docs[4]  # gold "74.3"
    base_prompt, _ = task.build(doc, BASE)
    chat_prompt, _ = task.build(doc, CHAT)
    assert task.score([_sample(doc, base_prompt, [" 74.3"])]) == [{"em": 1.0, "f1": 1.0}]
    assert task.score([_sample(doc, base_prompt, [" 74"])]) == [{"em": 0.0, "f1": 0.0}]
    # a backend that ignores the stop string: only the first line is the answer
    assert task.score([_sample(doc, base_prompt, [" 74.3\n\nPassage: ...\nAnswer: 12"])]) == [{"em": 1.0, "f1": 1.0}]
    chat_answer = "The share rose from 70.1 to 74.3.\nAnswer: 74.3"
    assert task.score([_sample(doc, chat_prompt, [chat_answer], chat=True)]) == [{"em": 1.0, "f1": 1.0}]
    # the mode is read from the record, never guessed from the prompt's text
    assert task.score([_sample(doc, base_prompt, [chat_answer], chat=True)]) == [{"em": 1.0, "f1": 1.0}]
    assert task.score([_sample(doc, chat_prompt, [" 74.3\nmore"])]) == [{"em": 1.0, "f1": 1.0}]
    averaged = task.score([_sample(doc, base_prompt, [" 74.3", " 12", " 74.3 percent", " 74.3"])])[0]
    assert averaged == {"em": 0.5, "f1": pytest.approx((1 + 0 + 0.67 + 1) / 4)}


def _run(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "dseval", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def test_gold_answers_through_replay(tmp_path: Path, data_dir: Path) -> None:
    with gzip.open(data_dir / "drop" / "drop_v0_dev.jsonl.gz", "rt", encoding="utf-8") as handle:
        golds = [json.loads(line)["ref_text"].split("|")[-1] for line in handle]  # the last accepted gold
    replay = tmp_path / "drop.jsonl"
    replay.write_text("".join(json.dumps({"id": f"drop/dev/{i}", "output": f" {g}"}) + "\n" for i, g in enumerate(golds)))
    out = tmp_path / "run"
    _run("run", "drop", "--model", f"replay:{replay}", "--data-dir", str(data_dir), "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    result = summary["tasks"]["drop"]
    assert result["n"] == 9536 and result["headline"] == "f1"
    assert result["metrics"]["f1"] == 1.0 and result["metrics"]["em"] == 1.0
    _run("score", str(out))
    assert json.loads((out / "summary.json").read_text()) == summary


class ReasoningChatModel(ModelBackend):
    """A chat model that reasons before its "Answer:" line (a base-mode read takes line one)."""

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return f"<user>{messages[-1]['content']}<assistant>"

    def generate(self, requests, on_result=None):
        results = [GenerateResult("From 70.1 it rose by 4.2.\nAnswer: 74.3") for _ in requests]
        for index, result in enumerate(results):
            on_result(index, result)
        return results

    def loglikelihood(self, requests, on_result=None):
        raise NotImplementedError


def test_chat_mode_is_recorded_on_samples_and_rescored_from_them(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    config = RunConfig(tasks=("drop",), model="chat", out=out, data_dir=str(data_dir), chat=True, ids=("drop/dev/4",))
    assert evaluate(config, ReasoningChatModel())["tasks"]["drop"]["metrics"]["f1"] == 1.0
    samples_file = out / "drop" / "samples.jsonl"
    [record] = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert record["chat"] is True
    assert rescore(RunStore(out))["tasks"]["drop"]["metrics"]["f1"] == 1.0
    del record["chat"]  # as a run written before samples recorded the mode: run.json says chat
    samples_file.write_text(json.dumps(record) + "\n")
    assert rescore(RunStore(out))["tasks"]["drop"]["metrics"]["f1"] == 1.0
