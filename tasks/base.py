"""The task API: what a benchmark plugin declares, and the registry that finds plugins.

A task turns dataset rows into :class:`Doc` objects, each doc into typed requests (see
:mod:`dseval.requests`), and finished :class:`Sample` records into per-sample metrics. It never
calls a model itself and never aggregates by hand: the runner batches requests across all docs,
and :mod:`dseval.metrics` owns means, standard errors and breakdowns, so every task reports
them the same way.

Per-sample scoring reads only the sample record (output + target + fields), never the
dataset, which is what lets ``dseval score RUN_DIR`` recompute everything from samples.jsonl.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

from dseval.data import DataSource, DatasetSpec
from dseval.errors import UserError
from dseval.metrics import Summary, summarize
from dseval.requests import GenerateRequest, LoglikelihoodRequest

RequestType = Literal["loglikelihood", "generate"]
Request = LoglikelihoodRequest | GenerateRequest


@dataclass(frozen=True)
class Doc:
    """One evaluation item.

    ``id`` is the dataset's own id where it has one (``HumanEval/0``), else
    ``<task>/<split>/<index>``. ``group`` names the subset (an MMLU subject) that ``--limit``
    applies to separately. ``target`` is everything the scorer needs besides the model's
    output (JSON-serialisable), and ``fields`` are recorded for breakdowns (subject, level).
    """

    id: str
    data: dict[str, Any]
    target: Any
    group: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """A finished doc as stored in samples.jsonl: the model's answers plus what scores them."""

    id: str
    #: Position of the doc in the task's reference order; summaries follow it, so a resumed
    #: run (whose samples finished in another order) aggregates exactly like a fresh one.
    index: int
    prompt: str
    target: Any
    fields: dict[str, Any]
    # generation tasks: one output per sample drawn; loglikelihood tasks: one score per choice
    outputs: list[str] | None = None
    loglikelihoods: list[float] | None = None
    is_greedy: list[bool] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id, "index": self.index, "prompt": self.prompt}
        if self.outputs is not None:
            record["output"] = self.outputs[0] if len(self.outputs) == 1 else self.outputs
        if self.loglikelihoods is not None:
            record["loglikelihoods"] = self.loglikelihoods
            record["is_greedy"] = self.is_greedy
        record.update(target=self.target, fields=self.fields, metrics=self.metrics)
        if self.details:
            record["details"] = self.details
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Sample:
        output = record.get("output")
        outputs = None if output is None else (output if isinstance(output, list) else [output])
        return cls(
            id=record["id"],
            index=record["index"],
            prompt=record.get("prompt", ""),
            target=record.get("target"),
            fields=record.get("fields", {}),
            outputs=outputs,
            loglikelihoods=record.get("loglikelihoods"),
            is_greedy=record.get("is_greedy"),
            metrics=record.get("metrics", {}),
            details=record.get("details", {}),
        )


@dataclass(frozen=True)
class PromptContext:
    """What request building may depend on besides the doc, all fixed per run."""

    shots: int
    chat: bool
    seed: int
    samples: int
    render_chat: Callable[[list[dict[str, str]]], str]
    max_tokens: int | None = None

    def as_prompt(self, text: str, system: str | None = None) -> str:
        """The exact string sent: raw text for base models, the chat template's rendering of a
        single user turn for chat models."""
        if not self.chat:
            return text
        messages = [{"role": "system", "content": system}] if system else []
        return self.render_chat(messages + [{"role": "user", "content": text}])


class Task(ABC):
    """A benchmark plugin. Subclasses set the class attributes and implement the three hooks."""

    name: ClassVar[str]
    #: Changes whenever prompts, data selection or scoring change; recorded in run.json.
    version: ClassVar[str]
    dataset: ClassVar[DatasetSpec]
    request_type: ClassVar[RequestType]
    default_shots: ClassVar[int] = 0
    #: Metric shown first in tables and compared by regression checks.
    headline: ClassVar[str]
    #: Sample fields that get a per-value breakdown of every metric in the summary.
    breakdowns: ClassVar[tuple[str, ...]] = ()
    #: How report tables name the benchmark and its metric ("DROP" and "F1" make "DROP (F1)"), so
    #: a leaderboard row reads like the DeepSeek-V3 report's and not like a task id.
    display_name: ClassVar[str] = ""
    metric_label: ClassVar[str] = ""
    #: The report's grouping of rows: English, Code, Math or Chinese (other tasks name their own).
    category: ClassVar[str] = ""
    #: "%" for scores printed x100 (accuracy, F1, pass@k), "score" for numbers printed as they are.
    unit: ClassVar[Literal["%", "score"]] = "%"

    @abstractmethod
    def load(self, source: DataSource) -> list[Doc]:
        """All docs of the evaluated split, in the reference order."""

    @abstractmethod
    def build(self, doc: Doc, ctx: PromptContext) -> tuple[str, list[Request]]:
        """The prompt recorded for ``doc`` and its requests (one per choice, or one per sample)."""

    @abstractmethod
    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        """Per-sample metrics, computed from each sample's outputs and target alone."""

    def summarize(self, samples: Sequence[Sample]) -> Summary:
        """Aggregate metrics; the default is the mean with its standard error, plus breakdowns."""
        return summarize(samples, self.breakdowns)


_REGISTRY: dict[str, type[Task]] = {}
_ENTRY_POINTS_LOADED = False


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task name {cls.name!r} registered twice ({_REGISTRY[cls.name].__module__}, {cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    """Import every package registered under the ``dseval.tasks`` entry-point group, so
    third-party tasks register themselves exactly like the built-in ones."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group="dseval.tasks"):
        ep.load()


def all_tasks() -> dict[str, type[Task]]:
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get_task(name: str) -> Task:
    tasks = all_tasks()
    if name not in tasks:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(tasks)}")
    return tasks[name]()


def sample_seed(seed: int, doc_id: str, sample_index: int) -> int:
    """A per-sample sampling seed that depends on the doc, not on its position in the batch,
    so resumed and re-ordered runs draw the same samples."""
    digest = hashlib.sha256(f"{seed}/{doc_id}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
