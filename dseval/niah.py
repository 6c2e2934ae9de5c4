"""The long-context sweep (``dseval niah``): the needle grid, its heatmap and its per-length bars.

The heatmap has context length across and needle depth down, each cell the share of needles
retrieved (with its 95% Wilson interval when a cell holds several samples), green for found and
red for missed: the figure long-context claims are judged by. The bar chart beside it gives one
bar per length, as the DeepSeek-V3 README's context-window figure does.

Grids are written as comma-separated values and ranges (see :func:`parse_values`), or taken
from a preset: ``deepseek`` is the 15 x 15 grid of the report's Figure 8 (2K to 128K in equal
steps of 9K, depths 0 to 100% in fourteenths), ``readme`` the lengths of the README's figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dseval.errors import UserError
from dseval.store import RunStore, write_json_atomic

#: name -> (lengths, depths). DeepSeek-V3 Figure 8: 15 lengths 2K..128K, 15 depths 0..100%.
GRIDS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "deepseek": (tuple(2048 + 9216 * i for i in range(15)), tuple(round(100 * i / 14) for i in range(15))),
    "readme": ((4096, 8192, 16384, 32768, 65536, 98304, 131072), tuple(range(0, 101, 10))),
}
#: Two-sided 95% normal quantile, for the Wilson interval.
Z95 = 1.959963984540054


def wilson(successes: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: unlike the normal one it stays inside [0, 1]
    and is not empty at 0 or n successes, which is where NIAH cells usually sit."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return min(max(0.0, centre - half), p), max(min(1.0, centre + half), p)  # rounding never leaves p outside


def grid(store: RunStore) -> dict[str, Any]:
    """Accuracy per (depth, length) cell and per length, with sample counts and 95% intervals."""
    cells: dict[tuple[int, int], list[float]] = {}
    for sample in store.load_samples("niah"):
        cells.setdefault((sample.fields["depth"], sample.fields["length"]), []).append(sample.metrics["acc"])
    if not cells:
        raise UserError(f"{store.root}: no niah samples to draw (is it a `dseval niah` run folder?)")
    depths = sorted({d for d, _ in cells})
    lengths = sorted({n for _, n in cells})

    def stats(values: list[float] | None) -> tuple[float | None, int, float | None, float | None]:
        if not values:
            return None, 0, None, None
        low, high = wilson(sum(values), len(values))
        return sum(values) / len(values), len(values), low, high

    table = [[stats(cells.get((d, n))) for n in lengths] for d in depths]
    per_length = [stats([v for d in depths for v in cells.get((d, n), [])]) for n in lengths]
    return {
        "depths": depths,
        "lengths": lengths,
        **{key: [[cell[i] for cell in row] for row in table] for i, key in enumerate(("acc", "n", "lower", "upper"))},
        "by_length": {key: [cell[i] for cell in per_length] for i, key in enumerate(("acc", "n", "lower", "upper"))},
    }


def length_label(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def parse_length(text: str) -> int:
    """The inverse of :func:`length_label`: '4k' -> 4096, '128K' -> 131072, '3000' -> 3000."""
    text = text.strip().lower()
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def parse_values(text: str, option: str, parse_one: Callable[[str], int] = int) -> tuple[int, ...]:
    """Comma-separated values and inclusive ranges, in order, repeats dropped.

    ``START:STOP:STEP`` counts up by STEP (``0:100:10``, ``2k:128k:9k``); ``START:STOP:xF``
    multiplies by F (``4k:128k:x2`` is 4K, 8K, ..., 128K). Values use ``parse_one`` (``4k`` for
    lengths).
    """
    values: list[int] = []
    try:
        for part in text.split(","):
            if ":" not in part:
                values.append(parse_one(part))
                continue
            if part.count(":") != 2:
                raise ValueError(f"range {part!r} is not START:STOP:STEP")
            start_text, stop_text, step_text = part.split(":")
            value, stop = parse_one(start_text), parse_one(stop_text)
            factor = float(step_text.strip()[1:]) if step_text.strip().lower().startswith("x") else None
            step = None if factor else parse_one(step_text)
            if (factor or 0) <= 1 and (step or 0) <= 0:
                raise ValueError(f"range {part!r} never ends: its step must be positive (a factor above 1)")
            while value <= stop:
                values.append(value)
                value = round(value * factor) if factor else value + step
        if not values:
            raise ValueError("no values (does a range start above its stop?)")
    except ValueError as err:
        raise UserError(f"--{option} {text!r}: {err} (write values like 1k,2k or ranges like 4k:128k:x2, 0:100:10)") from None
    return tuple(dict.fromkeys(values))


def choose_grid(preset: str | None, lengths: str | None, depths: str | None) -> dict[str, tuple[int, ...]]:
    """The sweep's lengths and depths that differ from the task's defaults: a preset's, each
    replaced by --lengths/--depths when given."""
    if preset is not None and preset not in GRIDS:
        raise UserError(f"--grid {preset!r}: unknown preset; choose {' or '.join(GRIDS)}")
    chosen = dict(zip(("lengths", "depths"), GRIDS[preset], strict=True)) if preset else {}
    if lengths:
        chosen["lengths"] = parse_values(lengths, "lengths", parse_length)
    if depths:
        chosen["depths"] = parse_values(depths, "depths")
    return chosen


def _cell_text(acc: float, n: int, low: float, high: float) -> str:
    return f"{acc:.0%}" if n == 1 else f"{acc:.0%}\n{low:.0%}-{high:.0%}"


def draw_heatmap(table: dict[str, Any], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in table["acc"]], dtype=float)
    several = max(max(row) for row in table["n"]) > 1
    fig, ax = plt.subplots(figsize=(1.2 + (1.0 if several else 0.8) * len(table["lengths"]),
                                    1.0 + (0.6 if several else 0.45) * len(table["depths"])))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(table["lengths"])), [length_label(n) for n in table["lengths"]])
    ax.set_yticks(range(len(table["depths"])), [f"{d}%" for d in table["depths"]])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    n_max = max(max(row) for row in table["n"])
    ax.set_title(title + (f"\n{n_max} needles per cell, 95% interval" if several else ""), fontsize=9)
    for (row, col), value in np.ndenumerate(values):
        if not np.isnan(value):
            text = _cell_text(value, table["n"][row][col], table["lower"][row][col], table["upper"][row][col])
            ax.text(col, row, text, ha="center", va="center", fontsize=6 if several else 7)
    fig.colorbar(image, ax=ax, label="retrieved")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_bars(table: dict[str, Any], title: str, path: Path) -> None:
    """One bar per context length (all depths and samples pooled) with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table["by_length"]
    labels = [length_label(n) for n in table["lengths"]]
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(labels), 3.6))
    errors = [[a - lo for a, lo in zip(rows["acc"], rows["lower"], strict=True)],
              [hi - a for a, hi in zip(rows["acc"], rows["upper"], strict=True)]]
    ax.bar(labels, rows["acc"], yerr=errors, capsize=3, color=[plt.cm.RdYlGn(a) for a in rows["acc"]], edgecolor="black")
    for i, (acc, n, high) in enumerate(zip(rows["acc"], rows["n"], rows["upper"], strict=True)):
        ax.text(i, high + 0.02, f"{acc:.0%}\nn={n}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, 1.2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needles retrieved")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(store: RunStore, title: str | None = None) -> dict[str, Any]:
    """niah.json (the grid), niah.png (its heatmap) and niah_lengths.png (bars per length) in
    the run folder; the title defaults to the run's model."""
    table = grid(store)
    if title is None:
        run = store.read_run() or {}
        title = f"needle in a haystack: {run.get('model', store.root.name)}"
    write_json_atomic(store.root / "niah.json", table)
    draw_heatmap(table, title, store.root / "niah.png")
    draw_bars(table, title, store.root / "niah_lengths.png")
    return table


def report_rows(table: dict[str, Any]) -> list[list[str]]:
    """The heatmap as text rows (depth, then one share per length), for the terminal."""
    def cell(row: int, col: int) -> str:
        acc = table["acc"][row][col]
        if acc is None:
            return "-"
        n = table["n"][row][col]
        return f"{acc:.0%}" if n == 1 else f"{acc:.0%} [{table['lower'][row][col]:.0%}, {table['upper'][row][col]:.0%}]"

    return [[f"{d}%", *[cell(r, c) for c in range(len(table["lengths"]))]] for r, d in enumerate(table["depths"])]
