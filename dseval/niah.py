"""The long-context sweep (``dseval niah``): run the needle grid and draw its heatmap.

The heatmap has context length across and needle depth down, each cell the share of needles
retrieved, green for found and red for missed: the figure long-context claims are judged by.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dseval.store import RunStore, write_json_atomic


def grid(store: RunStore) -> dict[str, Any]:
    """Accuracy per (depth, length) cell from the run's samples."""
    cells: dict[tuple[int, int], list[float]] = {}
    for sample in store.load_samples("niah"):
        key = (sample.fields["depth"], sample.fields["length"])
        cells.setdefault(key, []).append(sample.metrics["acc"])
    depths = sorted({d for d, _ in cells})
    lengths = sorted({n for _, n in cells})
    values = [[sum(cells[(d, n)]) / len(cells[(d, n)]) if (d, n) in cells else None for n in lengths] for d in depths]
    return {"depths": depths, "lengths": lengths, "acc": values}


def length_label(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def parse_length(text: str) -> int:
    """The inverse of :func:`length_label`: '4k' -> 4096, '128K' -> 131072, '3000' -> 3000."""
    text = text.strip().lower()
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def draw_heatmap(table: dict[str, Any], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in table["acc"]], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(table["lengths"]), 1.0 + 0.45 * len(table["depths"])))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(table["lengths"])), [length_label(n) for n in table["lengths"]])
    ax.set_yticks(range(len(table["depths"])), [f"{d}%" for d in table["depths"]])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    for (row, col), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(col, row, f"{value:.0%}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="retrieved")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(store: RunStore, title: str) -> dict[str, Any]:
    """niah.json (the grid) and niah.png (its heatmap) in the run folder."""
    table = grid(store)
    write_json_atomic(store.root / "niah.json", table)
    draw_heatmap(table, title, store.root / "niah.png")
    return table
