"""What the regression gate accepts: significance level, per-task tolerances and floors.

Read from ``--tolerances FILE`` (TOML or JSON, by extension), e.g.::

    alpha = 0.05          # family-wise, after Holm's correction across tasks
    resamples = 10000     # paired bootstrap draws (non-0/1 metrics)
    seed = 0              # of the bootstrap generator

    [default]
    tolerance = 0.5       # a drop of at most this many points never fails

    [tasks.mmlu]
    tolerance = 1.0
    floor = 85.0          # the new run's score below 85.0 fails, significant or not

Points are the x100 scale the tables print (87.1), so a tolerance reads like the table it
guards.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dseval.errors import UserError


@dataclass(frozen=True)
class TaskLimits:
    #: Points a drop may reach before it can count as a regression.
    tolerance: float = 0.0
    #: Points the new run must reach, whatever the test says (None: no floor).
    floor: float | None = None
    #: Metric to gate on instead of the task's headline.
    metric: str | None = None


@dataclass(frozen=True)
class GateSettings:
    alpha: float = 0.05
    resamples: int = 10_000
    seed: int = 0
    default: TaskLimits = TaskLimits()
    tasks: dict[str, TaskLimits] = field(default_factory=dict)
    #: Tolerance zero for everything: per-sample outputs, loglikelihoods and metrics must be
    #: identical (a deterministic CPU run against its pinned baseline).
    exact: bool = False
    #: In exact mode, how far (nats) a loglikelihood may move and still count as unchanged: a
    #: CPU model with other vector widths sums float32 in another order, which moves the last
    #: bits, while any change to a prompt, a tokenizer or the model moves it far more.
    loglikelihood_atol: float = 0.0

    def limits(self, task: str) -> TaskLimits:
        return self.tasks.get(task, self.default)

    @classmethod
    def from_file(cls, path: Path, exact: bool = False) -> GateSettings:
        if not path.is_file():
            raise UserError(f"--tolerances: {path} not found")
        text = path.read_text(encoding="utf-8")
        try:
            raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
        except tomllib.TOMLDecodeError as err:
            raise UserError(f"{path}: not valid TOML ({err})") from err
        unknown = set(raw) - {"alpha", "resamples", "seed", "default", "tasks"}
        if unknown:
            raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; use alpha, resamples, seed, default, tasks")
        alpha = _number(raw, "alpha", 0.05, path)
        if not 0 < alpha < 1:
            raise UserError(f"{path}: alpha must be between 0 and 1, got {alpha}")
        resamples = int(_number(raw, "resamples", 10_000, path))
        if resamples < 100:
            raise UserError(f"{path}: resamples must be at least 100, got {resamples}")
        default = _limits(raw.get("default", {}), f"{path}: [default]")
        tasks = raw.get("tasks", {})
        if not isinstance(tasks, dict):
            raise UserError(f"{path}: tasks must be a table of task names")
        return cls(alpha, resamples, int(_number(raw, "seed", 0, path)), default,
                   {name: _limits(value, f"{path}: [tasks.{name}]", default) for name, value in tasks.items()}, exact)


def _number(table: dict[str, Any], key: str, default: float, where: object) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _limits(table: Any, where: str, inherit: TaskLimits = TaskLimits()) -> TaskLimits:
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table with tolerance, floor, metric")
    unknown = set(table) - {"tolerance", "floor", "metric"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use tolerance, floor, metric")
    tolerance = _number(table, "tolerance", inherit.tolerance, where)
    if tolerance < 0:
        raise UserError(f"{where}: tolerance must be >= 0 points, got {tolerance}")
    floor = None if table.get("floor", inherit.floor) is None else _number(table, "floor", inherit.floor or 0.0, where)
    metric = table.get("metric", inherit.metric)
    if metric is not None and not isinstance(metric, str):
        raise UserError(f"{where}: metric must be a metric name, got {metric!r}")
    return TaskLimits(tolerance, floor, metric)
