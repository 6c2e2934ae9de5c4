"""The gate's report in the three forms CI systems read: a terminal table, JSON, JUnit XML.

JUnit makes each task a test case, so a CI page lists "mmlu: DROP" beside the unit tests;
the incomparable runs become errors (not failures), as exit code 2 differs from 1.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from dseval.compare import FAILING, GateReport, TaskResult

STYLE = {"DROP": "bold red", "MISSING": "bold red", "FLOOR": "bold red", "CHANGED": "bold red",
         "INCOMPARABLE": "bold yellow", "better": "green"}


def _points(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def table(report: GateReport) -> Table:
    grid = Table("task", "metric", "baseline", "new", "diff", "n (base/new/paired)", "test", "p", "p Holm", "verdict", "why",
                 title=f"dseval compare: {report.baseline} -> {report.new}")
    for r in report.results:
        verdict = f"[{STYLE[r.status]}]{r.status}[/]" if r.status in STYLE else r.status
        grid.add_row(r.task, r.metric, _points(r.base), _points(r.new), _points(r.diff, signed=True),
                     f"{r.base_n}/{r.new_n}/{r.paired_n}", r.test or "-", _p(r.p), _p(r.p_holm), verdict, escape("; ".join(r.reasons)))
    return grid


def summary_line(report: GateReport) -> str:
    incomparable = report.reasons + [f"{r.task}: {'; '.join(r.reasons)}" for r in report.results if r.status == "INCOMPARABLE"]
    if incomparable:
        return "runs are not comparable (exit 2):\n  " + "\n  ".join(incomparable)
    failing = [f"{r.task} {r.status}" for r in report.results if r.status in FAILING]
    return "gate failed: " + ", ".join(failing) if failing else f"gate passed (alpha {report.settings.alpha:g}, Holm over tasks)"


def _case(suite: ET.Element, result: TaskResult) -> None:
    case = ET.SubElement(suite, "testcase", classname="dseval.compare", name=f"{result.task}.{result.metric}")
    message = f"{result.status}: baseline {_points(result.base)}, new {_points(result.new)}, p Holm {_p(result.p_holm)}"
    text = "; ".join(result.reasons)
    if result.status in FAILING:
        ET.SubElement(case, "failure", message=message, type=result.status).text = text
    elif result.status == "INCOMPARABLE":
        ET.SubElement(case, "error", message=message, type=result.status).text = text
    elif text:
        ET.SubElement(case, "system-out").text = text


def write_junit(report: GateReport, path: Path) -> None:
    failures = sum(r.status in FAILING for r in report.results)
    errors = sum(r.status == "INCOMPARABLE" for r in report.results) + bool(report.reasons)
    suite = ET.Element("testsuite", name="dseval compare", tests=str(len(report.results) + bool(report.reasons)),
                       failures=str(failures), errors=str(errors))
    if report.reasons:
        case = ET.SubElement(suite, "testcase", classname="dseval.compare", name="run configuration")
        ET.SubElement(case, "error", message="runs are not comparable", type="INCOMPARABLE").text = "\n".join(report.reasons)
    for result in report.results:
        _case(suite, result)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
