"""Leaderboard tables in the layout of the DeepSeek-V3 report: one row per benchmark and
metric, one column per model, the best score of each row in bold.

Runs are read from their summary.json; scores print as percentages with one decimal (87.1),
the precision of published tables. pandas renders CSV, HTML and LaTeX; Markdown is a plain
pipe table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import pandas as pd

from dseval.errors import UserError

Format = Literal["md", "csv", "html", "latex"]


def read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json" if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise UserError(f"{path} not found: pass run folders written by `dseval run`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def score_frame(run_dirs: list[Path], names: list[str] | None = None) -> pd.DataFrame:
    """Headline scores (x100) indexed by (benchmark, metric), a column per run."""
    if names and len(names) != len(run_dirs):
        raise UserError(f"--name was given {len(names)} times for {len(run_dirs)} runs")
    columns = {}
    for i, run_dir in enumerate(run_dirs):
        summary = read_summary(run_dir)
        label = names[i] if names else summary.get("model", str(run_dir))
        if label in columns:
            label = f"{label} ({run_dir})"
        columns[label] = {
            (task, result["headline"]): percent(result["metrics"].get(result["headline"]))
            for task, result in summary["tasks"].items()
        }
    frame = pd.DataFrame(columns)
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["benchmark", "metric"])
    return frame.sort_index()


def _cell(value: float, best: bool, bold: tuple[str, str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.1f}"
    return f"{bold[0]}{text}{bold[1]}" if best else text


def render(frame: pd.DataFrame, fmt: Format) -> str:
    if fmt == "csv":
        return frame.round(1).to_csv()
    best = frame.eq(frame.max(axis=1), axis=0) & frame.notna()
    if fmt == "md":
        header = ["Benchmark", "Metric", *frame.columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(frame.columns)]
        for (bench, metric), row in frame.iterrows():
            cells = [_cell(row[c], best.loc[(bench, metric), c], ("**", "**")) for c in frame.columns]
            lines.append("| " + " | ".join([bench, metric, *cells]) + " |")
        return "\n".join(lines) + "\n"
    styler = frame.style.format("{:.1f}", na_rep="-")
    if fmt == "html":
        return styler.highlight_max(axis=1, props="font-weight: bold").to_html()
    if fmt == "latex":
        return styler.highlight_max(axis=1, props="textbf: --rwrap").to_latex(hrules=True)
    raise UserError(f"unknown format {fmt!r}: use md, csv, html or latex")


def percent(value: float | None) -> float:
    """A metric as points; an undefined one (a task with no samples yet) is an empty cell."""
    return math.nan if value is None else 100 * value
