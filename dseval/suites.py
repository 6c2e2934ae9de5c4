"""Suites: a published table's rows as one run, each task with the protocol the table states.

A suite is a small TOML file (``configs/suites/<name>.toml``, or any path)::

    description = "DeepSeek-V3 technical report, Table 3 (base models)"
    chat = false                      # base-model prompts, or the chat template for every task
    layout = "deepseek-v3-base"       # optional: row order of `dseval leaderboard --layout`

    [[task]]
    name = "bbh"
    shots = 3                         # the table's "# Shots" column
    [[task]]
    name = "livecodebench"
    args = { since = "2024-08-01", until = "2024-11-30" }   # task options (--task-arg)

``dseval run --suite NAME --model SPEC`` turns it into one :class:`~dseval.config.RunConfig`
(per-task shots and options), so a suite run resumes, rescores and compares like any other, and
ends with the run's leaderboard in the suite's layout.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dseval.errors import UserError
from dseval.layouts import get_layout

#: Where ``--suite NAME`` looks when NAME is not a file: the repository's configs/suites.
SUITES_DIR = Path(__file__).resolve().parents[1] / "configs" / "suites"


@dataclass(frozen=True)
class SuiteTask:
    name: str
    shots: int | None = None
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    chat: bool
    tasks: tuple[SuiteTask, ...]
    layout: str | None = None

    def task_shots(self) -> tuple[tuple[str, int], ...]:
        return tuple((t.name, t.shots) for t in self.tasks if t.shots is not None)

    def task_args(self) -> tuple[tuple[str, str, str], ...]:
        return tuple((t.name, key, value) for t in self.tasks for key, value in t.args)


def suite_path(name: str) -> Path:
    """A suite file: ``name`` itself if it is a file, else ``configs/suites/<name>.toml``."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = SUITES_DIR / f"{name}.toml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in SUITES_DIR.glob("*.toml")) if SUITES_DIR.is_dir() else []
    raise UserError(f"--suite {name}: no such file and no {candidate}; known suites: {', '.join(known) or 'none'}")


def _field(table: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise UserError(f"{where}: field '{key}' must be {kind.__name__}, got {value!r}")
    return value


def load_suite(name: str) -> Suite:
    path = suite_path(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML ({err})") from err
    entries = _field(data, "task", list, str(path))
    if not entries:
        raise UserError(f"{path}: a suite needs at least one [[task]] table")
    tasks = []
    for number, entry in enumerate(entries, 1):
        where = f"{path}: [[task]] #{number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f"{where}: needs a string field 'name'")
        shots = _field(entry, "shots", int, where)
        if shots is not None and shots < 0:
            raise UserError(f"{where}: field 'shots' must be >= 0, got {shots}")
        args = _field(entry, "args", dict, where, {})
        tasks.append(SuiteTask(entry["name"], shots, tuple((str(k), str(v)) for k, v in args.items())))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: a task is listed twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    layout = _field(data, "layout", str, str(path))
    if layout is not None:
        get_layout(layout)  # an unknown layout fails now, not after the run
    return Suite(path.stem, _field(data, "description", str, str(path), ""), _field(data, "chat", bool, str(path), False),
                 tuple(tasks), layout)
