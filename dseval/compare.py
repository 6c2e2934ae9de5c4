"""Regression checks between a baseline run and a new one (``dseval compare``).

A "real drop" is a decrease of a task's headline metric that chance does not explain. When
both runs hold per-sample results for the same docs the test is paired — the standard error of
the mean per-doc difference, which is far tighter than comparing two independent means —
otherwise it falls back to the two summaries' standard errors. A drop is flagged when
z = diff / stderr(diff) is below -z_threshold and the drop is at least ``min_drop`` points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dseval.errors import UserError
from dseval.leaderboard import read_summary
from dseval.metrics import mean_stderr
from dseval.store import RunStore


@dataclass(frozen=True)
class Comparison:
    task: str
    metric: str
    baseline: float
    new: float
    stderr: float
    paired_n: int  # docs compared pairwise (0: from the summaries)
    regression: bool

    @property
    def diff(self) -> float:
        return self.new - self.baseline

    @property
    def z(self) -> float:
        return z_score(self.diff, self.stderr)


def z_score(diff: float, stderr: float) -> float:
    """diff in units of its standard error; a change with zero spread is infinitely significant."""
    if stderr > 0:
        return diff / stderr
    return 0.0 if diff == 0 else math.copysign(math.inf, diff)


def _paired(base_dir: Path, new_dir: Path, task: str, metric: str) -> tuple[float, int] | None:
    """Stderr of the per-doc difference over docs both runs scored, or None without samples."""
    try:
        base = {s.id: s.metrics.get(metric) for s in RunStore(base_dir).load_samples(task)}
        new = {s.id: s.metrics.get(metric) for s in RunStore(new_dir).load_samples(task)}
    except UserError:
        return None
    common = [i for i in base if i in new and base[i] is not None and new[i] is not None]
    if len(common) < 2:
        return None
    return mean_stderr([new[i] - base[i] for i in common])[1], len(common)


def compare_runs(base_dir: Path, new_dir: Path, z_threshold: float = 1.96, min_drop: float = 0.0) -> list[Comparison]:
    base, new = read_summary(base_dir), read_summary(new_dir)
    shared = [t for t in base["tasks"] if t in new["tasks"]]
    if not shared:
        raise UserError(f"{base_dir} and {new_dir} have no task in common")
    out = []
    for task in shared:
        metric = base["tasks"][task]["headline"]
        b, n = base["tasks"][task], new["tasks"][task]
        if n["metrics"].get(metric) is None or b["metrics"].get(metric) is None:
            raise UserError(f"{new_dir if n['metrics'].get(metric) is None else base_dir}: task {task} has no value for "
                            f"{metric!r} (no samples yet?); finish the run first")
        paired = _paired(base_dir, new_dir, task, metric) if base_dir.is_dir() and new_dir.is_dir() else None
        stderr, paired_n = paired or (math.hypot(b["stderr"].get(metric, 0.0), n["stderr"].get(metric, 0.0)), 0)
        diff = n["metrics"][metric] - b["metrics"][metric]
        regression = z_score(diff, stderr) < -z_threshold and -diff * 100 >= min_drop
        out.append(Comparison(task, metric, b["metrics"][metric], n["metrics"][metric], stderr, paired_n, regression))
    return out
