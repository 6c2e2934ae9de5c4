"""Leaderboard output: Markdown, CSV, LaTeX, one self-contained HTML page, a grouped bar chart.

Every format shows the same board: a table per section in the report's order, the report's
"Category | Benchmark (Metric) | # Shots" columns, one decimal (the published precision), the
best full-run number of each row in bold, "*" on numbers of limited runs and a "†" on rows
whose runs are not alike, with the reasons as footnotes. The HTML page embeds the chart as a
base64 PNG, so it is one file to publish or attach.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable, Iterator
from typing import Literal

from dseval.errors import UserError
from dseval.leaderboard import Board, Cell, Row

Format = Literal["md", "csv", "html", "latex"]
DAGGER, STAR = "†", "*"


def number(cell: Cell | None, stderr: bool) -> str:
    if cell is None:
        return "-"
    text = f"{cell.value:.1f}"
    if stderr and cell.stderr is not None:
        text += f" ± {cell.stderr:.1f}"
    return text + (STAR if cell.limited else "")


def cells(row: Row, stderr: bool, bold: Callable[[str], str]) -> list[str]:
    best = row.best()
    return [bold(number(c, stderr)) if c is not None and not c.limited and c.value == best else number(c, stderr) for c in row.cells]


def label(row: Row) -> str:
    return row.meta.label + (f" {DAGGER}" if row.flags else "")


def categories(rows: list[Row]) -> Iterator[tuple[str, Row]]:
    """Each row with its category shown only where a run of categories starts, as the report prints it."""
    previous = None
    for row in rows:
        yield ("" if row.meta.category == previous else row.meta.category), row
        previous = row.meta.category


def footnotes(board: Board) -> list[str]:
    notes = [f"{DAGGER} {row.meta.label}: {'; '.join(row.flags)}" for _, rows in board.sections for row in rows if row.flags]
    if board.limited:
        notes.append(f"{STAR} limited run (--limit or --ids, not the whole benchmark): {', '.join(board.limited)}")
    return notes


def markdown(board: Board, stderr: bool) -> str:
    out = []
    for title, rows in board.sections:
        if title:
            out += [f"**{title}**", ""]
        out.append("| Category | Benchmark (Metric) | # Shots | " + " | ".join(board.columns) + " |")
        out.append("|---|---|---|" + "---:|" * len(board.columns))
        for category, row in categories(rows):
            out.append("| " + " | ".join([category, label(row), row.shots, *cells(row, stderr, lambda t: f"**{t}**")]) + " |")
        out.append("")
    return "\n".join(out + footnotes(board)).rstrip() + "\n"


def comma_separated(board: Board, stderr: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "category", "benchmark", "shots", *board.columns, "flags"])
    for title, rows in board.sections:
        for row in rows:
            writer.writerow([title, row.meta.category, row.meta.label, row.shots, *[number(c, stderr) for c in row.cells], "; ".join(row.flags)])
    return buffer.getvalue()


def _tex(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("±", r"$\pm$"), (DAGGER, r"$^\dagger$")):
        text = text.replace(char, escaped)
    return text


def latex(board: Board, stderr: bool) -> str:
    out = []
    for title, rows in board.sections:
        if title:
            out.append(f"% {title}")
        out += [r"\begin{tabular}{lll" + "r" * len(board.columns) + "}", r"\toprule",
                " & ".join(["Category", "Benchmark (Metric)", r"\# Shots", *map(_tex, board.columns)]) + r" \\", r"\midrule"]
        for category, row in categories(rows):
            values = cells(row, stderr, lambda t: rf"\textbf{{{_tex(t)}}}")
            values = [v if v.startswith(r"\textbf") else _tex(v) for v in values]
            out.append(" & ".join([_tex(category), _tex(label(row)), row.shots, *values]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out + [f"% {_tex(note)}" for note in footnotes(board)]).rstrip() + "\n"


def chart_png(board: Board, title: str = "") -> bytes:
    """Grouped bars: benchmarks along x, one bar per column, in the board's row order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for _, section in board.sections for row in section]
    width = 0.8 / max(len(board.columns), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2), dpi=110)
    for i, name in enumerate(board.columns):
        xs = [r + (i - (len(board.columns) - 1) / 2) * width for r in range(len(rows))]
        values = [row.cells[i].value if row.cells[i] is not None else 0.0 for row in rows]
        bars = axes.bar(xs, values, width, label=name + (" (limited run, hatched)" if name in board.limited else ""))
        for bar, row in zip(bars, rows, strict=True):
            if row.cells[i] is not None and row.cells[i].limited:
                bar.set_hatch("//")
    axes.set_xticks(range(len(rows)), [f"{row.meta.display_name}\n({row.meta.metric_label})" for row in rows], fontsize=8)
    axes.set_ylabel("score (%, or the benchmark's own scale)")
    axes.set_title(title or "dseval leaderboard")
    axes.legend(fontsize=8, ncols=min(len(board.columns), 4), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border-bottom: 1px solid #ccc; padding: 4px 10px; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
th {{ border-bottom: 2px solid #444; }}
p.note {{ font-size: 0.9em; color: #555; }}
img {{ max-width: 100%; }}
</style></head>
<body><h1>{title}</h1>
{tables}
{notes}
<img alt="grouped bar chart of the table" src="data:image/png;base64,{chart}">
</body></html>
"""


def page(board: Board, stderr: bool, title: str = "dseval leaderboard") -> str:
    tables = []
    for section, rows in board.sections:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ["Category", "Benchmark (Metric)", "# Shots", *board.columns])
        body = []
        for category, row in categories(rows):
            values = cells(row, stderr, lambda t: f"<b>{t}</b>")
            values = [v if v.startswith("<b>") else html.escape(v) for v in values]
            body.append("<tr>" + "".join(f"<td>{html.escape(t)}</td>" for t in (category, label(row), row.shots))
                        + "".join(f'<td class="num">{v}</td>' for v in values) + "</tr>")
        caption = f"<h2>{html.escape(section)}</h2>" if section else ""
        tables.append(f"{caption}<table><tr>{head}</tr>{''.join(body)}</table>")
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in footnotes(board))
    chart = base64.b64encode(chart_png(board, title)).decode("ascii")
    return PAGE.format(title=html.escape(title), tables="\n".join(tables), notes=notes, chart=chart)


def render(board: Board, fmt: Format, stderr: bool = False) -> str:
    renderers: dict[str, Callable[[Board, bool], str]] = {"md": markdown, "csv": comma_separated, "latex": latex, "html": page}
    if fmt not in renderers:
        raise UserError(f"--format {fmt!r} is not known: use md, csv, html or latex")
    return renderers[fmt](board, stderr)
