"""The records a run is made of: the evaluation item a task loads (:class:`Doc`) and the
finished item the runner stores (:class:`Sample`).

They sit below everything else in the harness (tasks, runner, store, metrics and scorers all
read them) and import nothing of it, so any of those modules can use them without an import
cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


#: Per-request facts a sample records after its answers: why generation stopped, token counts.
USAGE_FIELDS = ("finish_reasons", "prompt_tokens", "output_tokens")


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
    #: Whether ``prompt`` is a chat-template rendering (``--chat``). Scorers that read chat
    #: answers differently (an "Answer:" line, a code block) read it here instead of guessing
    #: from the prompt text, so ``dseval score`` needs nothing but the sample.
    chat: bool = False
    # per request, as the backend reported them (None where it could not say)
    finish_reasons: list[str] | None = None
    prompt_tokens: list[int | None] | None = None
    output_tokens: list[int | None] | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id, "index": self.index, "prompt": self.prompt}
        if self.chat:  # written only when set, so base-model records keep their old form
            record["chat"] = True
        if self.outputs is not None:
            record["output"] = self.outputs[0] if len(self.outputs) == 1 else self.outputs
        if self.loglikelihoods is not None:
            record["loglikelihoods"] = self.loglikelihoods
            record["is_greedy"] = self.is_greedy
        record.update(target=self.target, fields=self.fields, metrics=self.metrics)
        if self.details:
            record["details"] = self.details
        for key in USAGE_FIELDS:
            if getattr(self, key) is not None:
                record[key] = getattr(self, key)
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
            chat=bool(record.get("chat", False)),
            **{key: record.get(key) for key in USAGE_FIELDS},
        )
