"""The task API: what a benchmark plugin declares, and the registry that finds plugins.

A task turns dataset rows into :class:`Doc` objects, each doc into typed requests (see
:mod:`dseval.requests`), and finished :class:`Sample` records into per-sample metrics. It never
calls a model itself and never aggregates by hand: the runner batches requests across all docs,
and :mod:`dseval.metrics` owns means, standard errors and breakdowns, so every task reports
them the same way.

Per-sample scoring reads only the sample record (outputs, target, fields, chat), never the
dataset, which is what lets ``dseval score RUN_DIR`` recompute everything from samples.jsonl.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from dseval.data import DataSource, DatasetSpec
from dseval.errors import UserError
from dseval.metrics import Summary, summarize
from dseval.plugins import plugin_entry_points
from dseval.records import Doc, Sample
from dseval.requests import Request, RequestType

#: The module that registers the built-in tasks; the ``dseval.tasks`` entry point ``builtin``
#: names it too, and it is imported by name so that the core never imports its plugins' code.
BUILTIN_TASKS = {"builtin": "dseval.tasks.builtin"}


@dataclass(frozen=True)
class PromptContext:
    """What request building may depend on besides the doc, all fixed per run."""

    shots: int
    chat: bool
    seed: int
    samples: int
    #: The backend's chat template: the exact string a chat-mode loglikelihood prompt is.
    render_chat: Callable[[list[dict[str, str]]], str]
    max_tokens: int | None = None
    #: Run-level sampling (``--temperature/--top-p/--top-k``): None keeps the task's protocol.
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    #: ``--system-prompt``: the system turn of chat prompts whose task sets none.
    system_prompt: str | None = None
    #: What a sample records as the prompt of a chat request: the rendering where the backend
    #: applies the template, the conversation's JSON where a server does (None: ``render_chat``).
    record_chat: Callable[[list[dict[str, str]]], str] | None = None

    def conversation(self, text: str, system: str | None = None,
                     shots: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
        """A chat prompt's messages: the system turn (the task's, else ``--system-prompt``),
        each few-shot exemplar as a user turn answered by an assistant turn (lm-evaluation-harness's
        ``--fewshot_as_multiturn``), then ``text`` as the last user turn."""
        system = system or self.system_prompt
        messages = [{"role": "system", "content": system}] if system else []
        for question, answer in shots:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages + [{"role": "user", "content": text}]

    def recorded(self, messages: list[dict[str, str]]) -> str:
        """The prompt a sample records for a chat request of ``messages``."""
        return (self.record_chat or self.render_chat)(messages)

    def as_prompt(self, text: str, system: str | None = None) -> str:
        """The exact string scored: raw text for base models, the chat template's rendering of a
        single user turn for chat models (loglikelihood requests need a string; generation
        tasks send chat requests instead, see :func:`dseval.scoring.sampling.chat_prompt`)."""
        return self.render_chat(self.conversation(text, system)) if self.chat else text


class Task(ABC):
    """A benchmark plugin. Subclasses set the class attributes and implement the three hooks.

    ``score`` sees only finished :class:`Sample` records; what a scorer needs to know about the
    run (``Sample.chat``) is recorded on them.
    """

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
    #: Option names a user may set with ``--task-arg KEY=VALUE`` or a suite's ``args``; they
    #: change which docs load or how prompts are built, never how a sample is scored, so
    #: ``dseval score`` can rebuild the task without them.
    options: ClassVar[tuple[str, ...]] = ()
    #: Docs are independent cells (NIAH's grid): a resumed run may select more of them, keeping
    #: finished samples whose prompts are unchanged, instead of being refused.
    extensible: ClassVar[bool] = False

    def configure(self, options: Mapping[str, str]) -> None:
        """Apply options (keys already checked against :attr:`options`); raise
        :class:`~dseval.errors.UserError` naming the option for a bad value."""

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
    """Import the built-in tasks and every module registered under the ``dseval.tasks``
    entry-point group, so third-party tasks register themselves exactly like the built-in ones."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in plugin_entry_points("dseval.tasks", BUILTIN_TASKS).values():
        ep.load()


def all_tasks() -> dict[str, type[Task]]:
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get_task(name: str, options: Mapping[str, str] | None = None, **init: Any) -> Task:
    """The registered task ``name``, built with ``init`` (the NIAH sweep passes its grid) and
    configured with the user's string ``options`` (``--task-arg``, a suite's settings)."""
    tasks = all_tasks()
    if name not in tasks:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(tasks)}")
    task = tasks[name](**init)
    if options:
        unknown = sorted(set(options) - set(task.options))
        if unknown:
            raise UserError(f"task {name!r} has no option {unknown[0]!r} (its options: {', '.join(task.options) or 'none'})")
        task.configure(options)
    return task


def sample_seed(seed: int, doc_id: str, sample_index: int) -> int:
    """A per-sample sampling seed that depends on the doc, not on its position in the batch,
    so resumed and re-ordered runs draw the same samples."""
    digest = hashlib.sha256(f"{seed}/{doc_id}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
