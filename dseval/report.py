"""Terminal rendering of summaries: the final table of scores with standard errors."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table


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
