"""The run configuration: one validated object built by the CLI and passed down whole."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from dseval.backends.base import BackendOptions
from dseval.errors import UserError

#: Fields that decide which samples a run computes and how; a resumed run must agree on them.
#: ``prefill_attention`` is a model option (:class:`BackendOptions`): "fp8" changes numerics.
#: Speed knobs (batch size, prefill chunk, parallel layout) change results only as batch
#: composition does, so they stay out and a run may resume with other values.
IDENTITY_FIELDS = ("model", "limit", "ids", "shots", "seed", "chat", "samples", "max_tokens", "prefill_attention",
                   "strict",
                   "judge", "temperature", "top_p", "top_k", "system_prompt", "strip_reasoning")


@dataclass(frozen=True)
class RunConfig:
    tasks: tuple[str, ...]
    model: str
    out: Path
    limit: int | None = None
    ids: tuple[str, ...] | None = None
    shots: int | None = None
    #: Seeds the sampling of ``--samples N`` and every seeded draw.
    seed: int = 1234
    data_dir: str | None = None
    chat: bool = False
    samples: int = 1
    max_tokens: int | None = None
    #: How to run the model, shared by every command that runs one.
    options: BackendOptions = field(default_factory=BackendOptions)
    #: Code tasks: a pass the sandbox flagged as tampered (dseval.sandbox) counts as a failure.
    strict: bool = False
    #: Few-shot count per task, overriding the task's default (a suite's protocol); ``shots``
    #: still wins for every task when given. Guarded on resume by each task's prompt hash.
    task_shots: tuple[tuple[str, int], ...] = ()
    #: Task options as (task, key, value); task "" gives the option to every task of the run
    #: that declares it (``--task-arg``, ``--since``). Guarded by the data fingerprint.
    task_args: tuple[tuple[str, str, str], ...] = ()
    #: Model spec of the LLM judge for judge-scored tasks (Arena-Hard, AlpacaEval). Part of the
    #: identity: a resumed run must not mix two judges' verdicts.
    judge: str | None = None
    #: Generation settings for every request of the run (None: each task's protocol: greedy,
    #: or the task's own such as AIME's 16 samples at 0.7). Part of the identity.
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    #: The system turn of chat prompts (``--system-prompt``).
    system_prompt: str | None = None
    #: Remove a leading ``<think>...</think>`` block from answers before scoring, keeping the
    #: raw text in the sample; None: on for chat runs and chat-protocol tasks, off otherwise.
    strip_reasoning: bool | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise UserError("no task given; `dseval tasks` lists them")
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"--limit must be a positive number of docs, got {self.limit}")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise UserError(f"--temperature must be in [0, 2], got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0: off), got {self.top_k}")
        if self.shots is not None and self.shots < 0:
            raise UserError(f"--shots must be >= 0, got {self.shots}")
        if self.samples <= 0:
            raise UserError(f"--samples must be positive, got {self.samples}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise UserError(f"--max-tokens must be positive, got {self.max_tokens}")
        if self.options.timeout is not None and not self.options.timeout > 0:
            raise UserError(f"--timeout must be a positive number of seconds, got {self.options.timeout}")
        if self.options.max_retries < 0:
            raise UserError(f"--max-retries must be >= 0, got {self.options.max_retries}")
        if self.options.concurrency is not None and self.options.concurrency <= 0:
            raise UserError(f"--concurrency must be positive, got {self.options.concurrency}")

    def shots_for(self, task: str, default: int) -> int:
        if self.shots is not None:
            return self.shots
        return dict(self.task_shots).get(task, default)

    def options_for(self, task: str, declared: tuple[str, ...]) -> dict[str, str]:
        """The options given to ``task``: its own, plus the run-wide ones it declares."""
        given = {key: value for name, key, value in self.task_args if name == "" and key in declared}
        given.update({key: value for name, key, value in self.task_args if name == task})
        return given

    def identity(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update((f.name, getattr(self.options, f.name)) for f in fields(self.options))
        return {name: list(values[name]) if isinstance(values[name], tuple) else values[name] for name in IDENTITY_FIELDS}

    @classmethod
    def identity_defaults(cls) -> dict[str, Any]:
        """Default of each identity field: what a run.json written before the field existed meant."""
        declared = [*fields(cls), *fields(BackendOptions)]
        return {f.name: None if f.default is MISSING else f.default for f in declared if f.name in IDENTITY_FIELDS}
