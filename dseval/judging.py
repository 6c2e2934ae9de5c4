"""LLM-judge scoring: the step between a judge-scored task's generations and its scores.

Some benchmarks (Arena-Hard, AlpacaEval) are scored by a second model that reads each answer.
When a judge-scored task's generations are finished, the runner calls :func:`judge_samples`: it
asks the task for each unjudged sample's judge conversations, sends all of them to the judge
backend in one ``chat`` call (so the judge batches like any model), and stores the judge's raw
replies in the sample's ``details["verdicts"]``. Parsing a reply into a verdict is the task's
scorer's job, so ``dseval score RUN_DIR`` re-reads and re-aggregates the stored replies without
asking the judge again, and a changed parser needs no new judge calls.

A judging pass killed half-way keeps what it received: each sample's replies are appended to
``<task>/verdicts.jsonl`` as they complete, and a resumed run asks only for the rest. When every
sample is judged the replies move into samples.jsonl and that file is removed.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from dseval.backends.base import BackendOptions, ModelBackend
from dseval.backends.registry import load_backend
from dseval.errors import UserError
from dseval.requests import ChatRequest, GenerateResult
from dseval.store import RunStore
from dseval.records import Sample
from dseval.task import Task

VERDICTS = "verdicts"


class JudgedTask(ABC):
    """Mixin for tasks scored by an LLM judge (``dseval run --judge SPEC``)."""

    @abstractmethod
    def judge_requests(self, sample: Sample) -> list[ChatRequest]:
        """The judge conversations for one generated sample, in a fixed order; the scorer finds
        the replies in the same order in :func:`verdicts`. Each request carries the sample's id
        as ``doc_id`` and its position as ``sample_index``, so ``replay:`` can script a judge."""


def verdicts(sample: Sample) -> list[str] | None:
    """The judge's stored replies for ``sample``, or None before it was judged."""
    return sample.details.get(VERDICTS)


def open_judge(spec: str | None, tasks: Sequence[Task], model: str, backend: ModelBackend, options: BackendOptions) -> ModelBackend | None:
    """The judge backend the run needs: None when no task is judged, the model's own backend
    when the specs are equal (one engine, not two), else a new backend from ``--judge``."""
    judged = [task.name for task in tasks if isinstance(task, JudgedTask)]
    if not judged:
        return None
    if not spec:
        raise UserError(f"{', '.join(judged)} is scored by an LLM judge: add --judge SPEC (any model spec, "
                        "e.g. openai-chat:URL#MODEL)")
    return backend if spec == model else load_backend(spec, options)


def _sidecar(store: RunStore, task: str) -> Path:
    return store.samples_file(task).with_name("verdicts.jsonl")


def _read_sidecar(path: Path) -> dict[str, list[str]]:
    """Replies saved by an interrupted judging pass; a torn last line (a kill) is ignored."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # a line without its newline is torn
    saved = {}
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            saved[record["id"]] = record[VERDICTS]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{path}:{number}: not a verdict record ({err}); delete the file to ask the judge again") from err
    return saved


def judge_samples(task: Task, samples: list[Sample], store: RunStore, judge: ModelBackend) -> list[Sample]:
    """Judge every sample of ``task`` that has no stored replies, then rescore and rewrite the
    task's samples.jsonl. Returns the samples, scored."""
    assert isinstance(task, JudgedTask)
    path = _sidecar(store, task.name)
    saved = _read_sidecar(path)
    requests: list[ChatRequest] = []
    owner: list[tuple[str, int]] = []
    for sample in samples:
        if verdicts(sample) is None and sample.id not in saved:
            asked = task.judge_requests(sample)
            if not asked:  # nothing to judge (no output): stored as judged, with no replies
                saved[sample.id] = []
            owner += [(sample.id, slot) for slot in range(len(asked))]
            requests += asked
    counts = {sample_id: slot + 1 for sample_id, slot in owner}
    replies: dict[str, list[str | None]] = {sample_id: [None] * n for sample_id, n in counts.items()}
    with path.open("a", encoding="utf-8") as handle:

        def on_result(index: int, result: GenerateResult) -> None:
            sample_id, slot = owner[index]
            replies[sample_id][slot] = result.text
            counts[sample_id] -= 1
            if counts[sample_id] == 0:
                saved[sample_id] = replies.pop(sample_id)  # type: ignore[assignment]
                handle.write(json.dumps({"id": sample_id, VERDICTS: saved[sample_id]}, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

        if requests:
            judge.chat(requests, on_result)
    for sample in samples:
        if verdicts(sample) is None:
            sample.details[VERDICTS] = saved[sample.id]
    for sample, metrics in zip(samples, task.score(samples), strict=True):
        sample.metrics = metrics
    store.rewrite(task.name, samples)
    path.unlink()
    return samples
