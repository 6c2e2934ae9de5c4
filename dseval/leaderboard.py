"""Leaderboard tables in the layout of the DeepSeek-V3 report: benchmarks as rows (grouped by
category, named "DROP (F1)" as the report names them), one column per run, the best in bold.

A column is a run folder (summary.json, with run.json for how it was run) or a reference file
in summary.json's format (``results/reference/``: published numbers, each with its source).
Numbers from different runs only share a row when they measure the same thing; a row whose
runs differ in task version, shots, prompt hash or number of docs is flagged and the
difference spelled out, and a run limited with ``--limit``/``--ids`` is marked, never bolded.
Rendering lives in :mod:`dseval.leaderboard_render`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dseval.data import read_json
from dseval.errors import UserError
from dseval.layouts import Section
from dseval.tasks.base import all_tasks

#: Category order of the report's tables; other categories follow alphabetically.
CATEGORIES = ("English", "Code", "Math", "Chinese")
#: run.json task fields that must agree for numbers to share a row.
CHECKED = ("version", "shots", "prompt_hash", "n")


@dataclass(frozen=True)
class TaskMeta:
    display_name: str
    metric_label: str
    category: str
    unit: str

    @property
    def label(self) -> str:
        return f"{self.display_name} ({self.metric_label})" if self.metric_label else self.display_name


@dataclass(frozen=True)
class Cell:
    """One run's number for one benchmark, as printed (x100 for "%" units)."""

    value: float
    stderr: float | None
    n: int | None
    shots: int | None
    version: str | None = None
    prompt_hash: str | None = None
    limited: bool = False


@dataclass
class Column:
    label: str
    cells: dict[str, Cell]
    entries: dict[str, dict[str, Any]]  # task -> its summary entry (reference metadata)


@dataclass
class Row:
    task: str
    meta: TaskMeta
    cells: list[Cell | None]
    flags: list[str] = field(default_factory=list)
    #: False when even the full (not limited) runs of the row disagree: no number is "best".
    ranked: bool = True

    @property
    def shots(self) -> str:
        """As the runs record it (a chat run of a base-model task may differ from the task's default)."""
        known = {c.shots for c in self.cells if c is not None and c.shots is not None}
        return "/".join(f"{s}-shot" for s in sorted(known)) if known else "-"

    def best(self) -> float | None:
        """The value to bold: the highest number of a full run, if the full runs are alike."""
        values = [c.value for c in self.cells if c is not None and not c.limited]
        return max(values) if values and self.ranked else None


@dataclass
class Board:
    columns: list[str]
    sections: list[tuple[str, list[Row]]]
    limited: list[str]  # columns of limited runs


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found: pass run folders written by `dseval run` or reference files")
    return read_json(path)


def read_summary(run_dir: Path) -> dict[str, Any]:
    return _read_json(run_dir / "summary.json" if run_dir.is_dir() else run_dir)


def task_meta(task: str, entry: dict[str, Any]) -> TaskMeta:
    """The registered task's metadata, else what a reference file says about its row."""
    cls = all_tasks().get(task)
    if cls is not None and cls.display_name:
        return TaskMeta(cls.display_name, cls.metric_label, cls.category, cls.unit)
    return TaskMeta(entry.get("display_name", task), entry.get("metric_label", entry.get("headline", "")),
                    entry.get("category", ""), entry.get("unit", "%"))


def load_column(path: Path, label: str | None = None) -> Column:
    summary = read_summary(path)
    run = _read_json(path / "run.json") if path.is_dir() and (path / "run.json").is_file() else {}
    config = run.get("config", {})
    limited = config.get("limit") is not None or bool(config.get("ids"))
    cells = {}
    for task, entry in summary.get("tasks", {}).items():
        metric = entry["headline"]
        if metric not in entry.get("metrics", {}):
            raise UserError(f"{path}: task {task} has no value for its headline metric {metric!r}")
        record = run.get("tasks", {}).get(task, {})
        scale = 100.0 if task_meta(task, entry).unit == "%" else 1.0
        stderr = entry.get("stderr", {}).get(metric)
        cells[task] = Cell(
            value=scale * entry["metrics"][metric], stderr=None if stderr is None else scale * stderr,
            n=record.get("n_docs", entry.get("n")), shots=record.get("shots", entry.get("shots")),
            version=record.get("version", entry.get("version")), prompt_hash=record.get("prompt_hash"), limited=limited,
        )  # fmt: skip
    return Column(label or summary.get("model", str(path)), cells, summary.get("tasks", {}))


def row_flags(task: str, columns: list[Column]) -> list[str]:
    """What the runs of a row disagree on, each value with the runs that have it."""
    flags = []
    for name in CHECKED:
        by_value: dict[Any, list[str]] = {}
        for column in columns:
            value = getattr(column.cells[task], name) if task in column.cells else None
            if value is not None:
                by_value.setdefault(value, []).append(column.label)
        if len(by_value) > 1:
            shown = "; ".join(f"{str(v)[:8] if name == 'prompt_hash' else v} in {', '.join(labels)}" for v, labels in by_value.items())
            flags.append(f"{name} differs: {shown}")
    return flags


def _category_key(category: str) -> tuple[int, str]:
    return (CATEGORIES.index(category), "") if category in CATEGORIES else (len(CATEGORIES), category)


def build_board(columns: list[Column], layout: tuple[Section, ...] | None = None) -> Board:
    tasks: dict[str, dict[str, Any]] = {}
    for column in columns:
        for task, entry in column.entries.items():
            tasks.setdefault(task, entry)

    def row(task: str) -> Row:
        full = [c for c in columns if task in c.cells and not c.cells[task].limited]
        return Row(task, task_meta(task, tasks[task]), [c.cells.get(task) for c in columns], row_flags(task, columns),
                   ranked=not row_flags(task, full))

    sections: list[tuple[str, list[Row]]] = []
    placed: set[str] = set()
    for section in layout or ():
        present = [t for t in section.tasks if t in tasks]
        placed.update(present)
        if present:
            sections.append((section.title, [row(t) for t in present]))
    rest = sorted((t for t in tasks if t not in placed), key=lambda t: _category_key(task_meta(t, tasks[t]).category))
    if rest:
        sections.append(("Other benchmarks" if layout else "", [row(t) for t in rest]))
    limited = [c.label for c in columns if any(cell.limited for cell in c.cells.values())]
    return Board([c.label for c in columns], sections, limited)


def load_board(paths: list[Path], names: list[str] | None = None, layout: tuple[Section, ...] | None = None) -> Board:
    if names and len(names) != len(paths):
        raise UserError(f"--name was given {len(names)} times for {len(paths)} runs")
    columns = [load_column(path, names[i] if names else None) for i, path in enumerate(paths)]
    seen: dict[str, int] = {}
    for column, path in zip(columns, paths, strict=True):
        if column.label in seen:
            column.label = f"{column.label} ({path})"
        seen[column.label] = 1
    return build_board(columns, layout)
