"""Aggregation shared by every task: means with standard errors, breakdowns, pass@k.

Tasks produce per-sample metric dicts; everything that turns them into summary numbers lives
here once, so standard errors mean the same thing in every task (sample standard deviation
with ddof=1 over sqrt(n), as lm-evaluation-harness reports them).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dseval.records import Sample


@dataclass
class Summary:
    """A task's aggregate: metric -> value, metric -> standard error, and the sample count."""

    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    n: int = 0

    def add(self, name: str, values: Sequence[float]) -> None:
        self.metrics[name], self.stderr[name] = mean_stderr(values)


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def metric_names(samples: Iterable[Sample]) -> list[str]:
    """Metric names in first-seen order across samples."""
    names: dict[str, None] = {}
    for sample in samples:
        names.update(dict.fromkeys(sample.metrics))
    return list(names)


def group_by(samples: Iterable[Sample], field_name: str) -> dict[Any, list[Sample]]:
    groups: dict[Any, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.fields.get(field_name)].append(sample)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def summarize(samples: Sequence[Sample], breakdowns: Sequence[str] = ()) -> Summary:
    """Mean and stderr of every metric, plus ``metric/field/value`` for each breakdown field."""
    summary = Summary(n=len(samples))
    names = metric_names(samples)
    for name in names:
        summary.add(name, [s.metrics[name] for s in samples if name in s.metrics])
    for field_name in breakdowns:
        for value, members in group_by(samples, field_name).items():
            for name in names:
                summary.add(f"{name}/{field_name}/{value}", [s.metrics[name] for s in members if name in s.metrics])
    return summary


def add_macro(summary: Summary, samples: Sequence[Sample], metric: str, field_name: str, name: str) -> None:
    """``summary.metrics[name]``: the unweighted mean over the groups of ``field_name`` of each
    group's mean ``metric`` (MMLU's macro average over subjects, BBH's mean over its 27 tasks),
    with the standard error of that mean over groups."""
    per_group = [mean_stderr([s.metrics[metric] for s in members])[0] for members in group_by(samples, field_name).values()]
    summary.metrics[name], summary.stderr[name] = mean_stderr(per_group)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), computed as a
    product so large n does not overflow."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
