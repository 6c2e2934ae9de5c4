"""Terminal rendering of summaries: the final table of scores with standard errors."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from dseval.config import RunConfig
    from dseval.suites import Suite


def summary_table(summary: dict[str, Any]) -> Table:
    """One row per top-level metric of each task (breakdowns like ``acc/subject/x`` are left
    to summary.json); the headline metric first and in bold."""
    table = Table(title=f"dseval: {summary['model']}")
    for column, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("± stderr", "right"), ("n", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for task, result in summary["tasks"].items():
        headline = result["headline"]
        names = [headline] + [m for m in result["metrics"] if m != headline and "/" not in m]
        for name in names:
            value = result["metrics"].get(name, math.nan)
            stderr = result["stderr"].get(name, math.nan)
            style = "bold" if name == headline else ""
            table.add_row(task if name == headline else "", name, f"{value:.4f}", f"{stderr:.4f}", str(result["n"]), style=style)
    return table


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(summary_table(summary))


def print_suite_table(suite: Suite, summary: dict[str, Any], config: RunConfig, console: Console | None = None) -> None:
    """The suite's rows in the layout of the report's tables: benchmark (metric), # shots,
    the model's score x100 with one decimal."""
    from dseval.tasks.base import all_tasks

    classes = all_tasks()
    table = Table("Benchmark (Metric)", "# Shots", summary["model"], title=suite.description or suite.name)
    for entry in suite.tasks:
        result = summary["tasks"][entry.name]
        label = getattr(classes[entry.name], "display_name", entry.name)
        shots = config.shots_for(entry.name, classes[entry.name].default_shots)
        table.add_row(label, f"{shots}-shot", f"{100 * result['metrics'][result['headline']]:.1f}")
    (console or Console()).print(table)
