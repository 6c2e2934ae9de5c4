"""The regression gate (``dseval compare BASE NEW``): did the new run get worse?

Three questions, in this order:

1. Are the runs comparable at all? Task version, shots, prompts, data, generation settings
   and engine numerics (every field of run.json's ``config`` except the model and the doc
   selection) must agree, and every doc both runs scored must have had the same prompt and
   gold. If not, no statistic means anything: the gate says why and exits 2.
2. Is every baseline task there? A task the new run lacks fails; it must not pass silently.
3. Did a task's score drop beyond chance? Only docs both runs scored (same ids) are compared,
   with a paired test (:mod:`dseval.significance`), Holm-corrected across tasks; a significant
   drop smaller than the task's tolerance passes, and a score under its floor fails anyway.
   In exact mode any per-sample difference fails instead (a deterministic run is bitwise).
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from dseval.baseline import digests, read_records
from dseval.config import RunConfig
from dseval.data import read_json
from dseval.errors import UserError
from dseval.gate_settings import GateSettings
from dseval.significance import holm, is_binary, mcnemar_exact, paired_bootstrap

#: run.json config fields that select docs rather than change them: pairing handles those.
SELECTION_FIELDS = ("model", "limit", "ids")
#: Per-task fields of run.json that must agree whatever docs were selected.
TASK_FIELDS = ("version", "shots")
#: Hashes over the whole selection: comparable only when both runs selected the same docs.
SELECTION_HASHES = ("prompt_hash", "data_fingerprint")
#: Statuses that fail the gate (exit 1); INCOMPARABLE exits 2.
FAILING = ("DROP", "MISSING", "FLOOR", "CHANGED")


@dataclass
class TaskResult:
    task: str
    metric: str
    status: str = "ok"  # ok, better, DROP, MISSING, FLOOR, CHANGED, INCOMPARABLE, new
    base_n: int = 0
    new_n: int = 0
    paired_n: int = 0
    base: float | None = None  # mean over the paired docs
    new: float | None = None
    new_full: float | None = None  # the new run's score over all its docs (floors use it)
    test: str = ""
    p: float | None = None
    p_holm: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def diff(self) -> float | None:
        return None if self.base is None or self.new is None else self.new - self.base


@dataclass
class GateReport:
    baseline: str
    new: str
    settings: GateSettings
    results: list[TaskResult]
    #: Run-level reasons the runs cannot be compared (config differences).
    reasons: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.reasons or any(r.status == "INCOMPARABLE" for r in self.results):
            return 2
        return 1 if any(r.status in FAILING for r in self.results) else 0

    def to_json(self) -> dict[str, Any]:
        verdict = {0: "pass", 1: "fail", 2: "incomparable"}[self.exit_code]
        return {"baseline": self.baseline, "new": self.new, "verdict": verdict, "exit_code": self.exit_code,
                "reasons": self.reasons, "settings": asdict(self.settings), "tasks": [asdict(r) for r in self.results]}


class Run:
    """A finished run folder as the gate reads it (never written to)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if not root.is_dir():
            raise UserError(f"run folder {root} not found: pass folders written by `dseval run` or `dseval baseline update`")
        self.run = self._json("run.json")
        self.summary = self._json("summary.json")

    def _json(self, name: str) -> dict[str, Any]:
        path = self.root / name
        if not path.is_file():
            raise UserError(f"{path} not found: the gate needs a finished run folder")
        return read_json(path)

    def config(self) -> dict[str, Any]:
        return {**RunConfig.identity_defaults(), **self.run.get("config", {})}

    def samples(self, task: str) -> dict[str, dict[str, Any]] | None:
        path = self.root / task / "samples.jsonl"
        return {str(r["id"]): r for r in read_records(path)} if path.is_file() else None


def config_differences(base: Run, new: Run) -> list[str]:
    before, after = base.config(), new.config()
    return [f"run.json config.{key}: {before.get(key)!r} in the baseline, {after.get(key)!r} in the new run"
            for key in sorted(set(before) | set(after)) if key not in SELECTION_FIELDS and before.get(key) != after.get(key)]


def task_differences(base: Run, new: Run, task: str) -> list[str]:
    b, n = base.run["tasks"].get(task, {}), new.run["tasks"].get(task, {})
    reasons = [f"{key}: {b.get(key)!r} vs {n.get(key)!r}" for key in TASK_FIELDS if b.get(key) != n.get(key)]
    same_selection = b.get("n_docs") == n.get("n_docs") and all(
        base.config().get(k) == new.config().get(k) for k in ("limit", "ids"))
    if same_selection:
        reasons += [f"{key} differs" for key in SELECTION_HASHES if b.get(key) != n.get(key)]
    return reasons


def doc_differences(base: dict[str, dict], new: dict[str, dict], ids: list[str]) -> list[str]:
    """Paired docs whose prompt or gold differ: the runs did not ask the same questions."""
    reasons = []
    for what in ("prompt", "target"):
        key = f"{what}_sha256"
        changed = [i for i in ids if digests(base[i])[key] != digests(new[i])[key]]
        if changed:
            reasons.append(f"{len(changed)} paired doc(s) have a different {what}, e.g. {changed[0]}")
    return reasons


def sample_differences(base: dict[str, dict], new: dict[str, dict], ids: list[str], atol: float = 0.0) -> list[str]:
    """Exact mode: per-sample outputs and metrics must be bitwise equal, loglikelihoods equal
    to within ``atol`` (0: bitwise)."""
    reasons = []
    checks = {"output": lambda r: digests(r)["output_sha256"], "loglikelihoods": lambda r: r.get("loglikelihoods"),
              "is_greedy": lambda r: r.get("is_greedy"), "metrics": lambda r: r.get("metrics")}
    for what, get in checks.items():
        same = partial(values_close, atol=atol) if what == "loglikelihoods" else operator.eq
        changed = [i for i in ids if not same(get(base[i]), get(new[i]))]
        if changed:
            reasons.append(f"{what} of {len(changed)} doc(s) changed: {', '.join(changed[:5])}")
    return reasons


def values_close(a: list[float] | None, b: list[float] | None, atol: float) -> bool:
    if not atol or a is None or b is None:
        return a == b
    return len(a) == len(b) and all(abs(x - y) <= atol for x, y in zip(a, b))


def compare_task(base: Run, new: Run, task: str, settings: GateSettings) -> TaskResult:
    metric = settings.limits(task).metric or base.summary["tasks"][task]["headline"]
    result = TaskResult(task, metric)
    if task not in new.summary["tasks"]:
        result.status, result.reasons = "MISSING", [f"{new.root} has no task {task}"]
        return result
    result.new_full = new.summary["tasks"][task]["metrics"].get(metric)
    b_samples, n_samples = base.samples(task), new.samples(task)
    result.reasons = task_differences(base, new, task)
    if b_samples is None or n_samples is None:
        missing = base.root if b_samples is None else new.root
        result.status = "INCOMPARABLE"
        result.reasons.append(f"{missing / task / 'samples.jsonl'} not found: docs cannot be paired")
        return result
    result.base_n, result.new_n = len(b_samples), len(n_samples)
    ids = [i for i in b_samples if i in n_samples]
    result.paired_n = len(ids)
    result.reasons += doc_differences(b_samples, n_samples, ids)
    if not ids:
        result.reasons.append("no doc id in common")
    if result.reasons:
        result.status = "INCOMPARABLE"
        return result
    try:
        b_values = [float(b_samples[i]["metrics"][metric]) for i in ids]
        n_values = [float(n_samples[i]["metrics"][metric]) for i in ids]
    except KeyError:
        result.status, result.reasons = "INCOMPARABLE", [f"metric {metric!r} missing from some samples"]
        return result
    result.base, result.new = sum(b_values) / len(ids), sum(n_values) / len(ids)
    if is_binary(b_values) and is_binary(n_values):
        result.test, result.p = "mcnemar", mcnemar_exact(b_values, n_values)
    else:
        result.test, result.p = "bootstrap", paired_bootstrap(b_values, n_values, settings.resamples, settings.seed)
    if result.base_n != result.new_n:
        result.reasons.append(f"n differs: {result.base_n} baseline docs, {result.new_n} new; {result.paired_n} paired")
    if settings.exact:
        result.test = f"exact, {result.test}"
        changed = sample_differences(b_samples, n_samples, ids, settings.loglikelihood_atol)
        if result.base_n != result.new_n or changed:
            result.status = "CHANGED"
            result.reasons += changed
    return result


def decide(results: list[TaskResult], settings: GateSettings) -> None:
    """Holm across the tested tasks, then tolerance and floor per task."""
    tested = [r for r in results if r.p is not None]
    for result, adjusted in zip(tested, holm([r.p for r in tested]), strict=True):
        result.p_holm = adjusted
        limits = settings.limits(result.task)
        significant = adjusted < settings.alpha
        if result.status == "ok" and significant and result.diff < 0 and -100 * result.diff > limits.tolerance:
            result.status = "DROP"
        elif result.status == "ok" and significant and result.diff > 0:
            result.status = "better"
        if limits.floor is not None and result.new_full is not None and 100 * result.new_full < limits.floor:
            result.status = "FLOOR" if result.status in ("ok", "better", "DROP") else result.status
            result.reasons.append(f"{100 * result.new_full:.2f} is below the floor {limits.floor:g}")


def compare_runs(base_dir: Path, new_dir: Path, settings: GateSettings | None = None) -> GateReport:
    settings = settings or GateSettings()
    base, new = Run(base_dir), Run(new_dir)
    results = [compare_task(base, new, task, settings) for task in base.summary["tasks"]]
    decide(results, settings)
    results += [TaskResult(task, new.summary["tasks"][task]["headline"], status="new", reasons=["not in the baseline"])
                for task in new.summary["tasks"] if task not in base.summary["tasks"]]
    return GateReport(str(base_dir), str(new_dir), settings, results, config_differences(base, new))
