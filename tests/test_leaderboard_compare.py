"""Leaderboard: task metadata, the report's layouts and reference columns, flags for runs that
are not alike, the output formats, the chart and the HTML page in a real browser.
(The regression gate, ``dseval compare``, is tested in test_compare_gate.py.)"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_runs import write_run

from dseval.layouts import LAYOUTS, get_layout
from dseval.leaderboard import load_board
from dseval.leaderboard_render import chart_png, render
from dseval.tasks.base import all_tasks

TESTS = Path(__file__).parent
REFERENCE = TESTS.parent / "results" / "reference"
COLUMNS = {  # report order of the columns in each table
    "deepseek-v3-base": ["deepseek-v2-base", "qwen2.5-72b-base", "llama-3.1-405b-base", "deepseek-v3-base"],
    "deepseek-v3-chat": ["gpt-4o-chat", "claude-3.5-sonnet-chat", "llama-3.1-405b-chat", "deepseek-v3-chat"],
}
CHROMIUM = Path("/usr/bin/chromium")


def published_tables(path: Path) -> dict[str, list[tuple[str, list[float]]]]:
    """Table title -> [(row label, numbers)] from the README tables' Markdown."""
    tables: dict[str, list[tuple[str, list[float]]]] = {}
    title = ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
        elif line.startswith("| ") and not line.startswith("| Benchmark"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables.setdefault(title, []).append((cells[0], [float(c) for c in cells[1:]]))
    return tables


def md_rows(text: str) -> list[tuple[str, list[str]]]:
    """(benchmark label, number cells) of every table row of a rendered Markdown board."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 3 and cells[1] not in ("Benchmark (Metric)", "---"):
            rows.append((cells[1], cells[3:]))
    return rows


def test_task_metadata_names_rows_like_the_report() -> None:
    tasks = all_tasks()
    labels = {name: f"{cls.display_name} ({cls.metric_label})" for name, cls in tasks.items()}
    assert labels["mmlu"] == "MMLU (Acc.)" and labels["drop"] == "DROP (F1)"
    assert labels["humaneval"] == "HumanEval (Pass@1)" and labels["math500"] == "MATH-500 (EM)"
    assert {name: cls.category for name, cls in tasks.items() if name != "niah"} == {
        "drop": "English", "mmlu": "English", "humaneval": "Code", "mbpp": "Code", "mbpp_sanitized": "Code", "math": "Math", "math500": "Math"}
    assert all(cls.unit in ("%", "score") for cls in tasks.values())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_reproduces_the_published_tables(layout: str, data_dir: Path) -> None:
    """Row order, grouping and every number of the README tables, from results/reference/."""
    tables_file = data_dir.parent / "reference" / "deepseek-v3-readme-tables.md"
    if not tables_file.is_file():
        pytest.skip(f"{tables_file} not found")
    published = published_tables(tables_file)
    sections = get_layout(layout)
    board = load_board([REFERENCE / f"{name}.json" for name in COLUMNS[layout]], None, sections)
    assert [title for title, _ in board.sections] == [s.title for s in sections]
    text = render(board, "md")
    rows = md_rows(text)
    expected = [(label, values) for s in sections for label, values in published[s.title]]
    assert len(rows) == len(expected)
    for (label, cells), (published_label, values) in zip(rows, expected, strict=True):
        assert label.split(" (")[0] == published_label.split(" (")[0], (label, published_label)
        assert [float(c.strip("*")) for c in cells] == values
        assert cells[values.index(max(values))] == f"**{max(values):.1f}**"
    assert "†" not in text, "published columns of one table are alike"


def test_every_reference_number_names_its_table_and_row() -> None:
    for path in REFERENCE.glob("*.json"):
        for task, entry in json.loads(path.read_text())["tasks"].items():
            source = entry["source"]
            assert source["document"] == "DeepSeek-V3 README" and source["table"] and source["row"] and source["column"], (path, task)
            scale = 100 if entry["unit"] == "%" else 1
            assert round(scale * entry["metrics"][entry["headline"]], 6) == source["published"]


def test_limited_and_unlike_runs_are_flagged_never_bolded(tmp_path: Path) -> None:
    full = write_run(tmp_path / "full", {"mmlu": [1.0, 0.0, 0.0, 1.0], "drop": [0.5, 0.5, 0.5, 0.5]}, "acc", shots=5)
    limited = write_run(tmp_path / "limited", {"mmlu": [1.0, 1.0]}, "acc", shots=5, limit=2)
    zero_shot = write_run(tmp_path / "zero", {"drop": [0.25, 0.25, 0.25, 0.25]}, "acc", shots=0)
    text = render(load_board([full, limited, zero_shot]), "md", stderr=True)
    rows = dict(md_rows(text))
    assert rows["MMLU (Acc.) †"] == ["**50.0 ± 28.9**", "100.0 ± 0.0*", "-"], "the 2-doc run is higher but not bolded"
    assert rows["DROP (F1) †"] == ["50.0 ± 0.0", "-", "25.0 ± 0.0"], "different shots: no best"
    assert "† MMLU (Acc.): n differs: 4 in full; 2 in limited" in text
    assert "† DROP (F1): shots differs: 5 in full; 0 in zero; prompt_hash differs: p5 in full; p0 in zero" in text
    assert "* limited run (--limit or --ids, not the whole benchmark): limited" in text
    categories = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "Benchmark" not in line]
    assert categories == ["English", ""], "rows grouped by category, the category named once"


def test_formats(tmp_path: Path) -> None:
    board = load_board([REFERENCE / "deepseek-v2-base.json", REFERENCE / "deepseek-v3-base.json"], ["V2", "V3"], get_layout("deepseek-v3-base"))
    assert render(board, "csv").splitlines()[1] == "Academic (base models),English,MMLU (Acc.),5-shot,78.4,87.1,"
    assert r"\textbf{87.1}" in render(board, "latex") and r"\# Shots" in render(board, "latex")
    page = render(board, "html")
    assert re.findall(r'(?:src|href)="([^"]*)"', page) == [page.split('src="')[1].split('"')[0]]
    png = base64.b64decode(page.split("data:image/png;base64,")[1].split('"')[0])
    assert png == chart_png(board, "dseval leaderboard") and png.startswith(b"\x89PNG")


def test_chart_has_a_bar_per_model_and_benchmark() -> None:
    import matplotlib.image

    board = load_board([REFERENCE / "deepseek-v2-base.json", REFERENCE / "deepseek-v3-base.json"], ["V2", "V3"], get_layout("deepseek-v3-base"))
    image = matplotlib.image.imread(io.BytesIO(chart_png(board)))[..., :3]
    blue, orange = np.array([0.12, 0.47, 0.71]), np.array([1.0, 0.5, 0.05])  # matplotlib's first two colours
    for colour in (blue, orange):
        assert (np.abs(image - colour).max(axis=-1) < 0.05).sum() > 500


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (/usr/bin/chromium)")
def test_html_page_renders_in_chromium(tmp_path: Path) -> None:
    """The page as a browser draws it: tables and the embedded chart (its bars' colours) visible."""
    import matplotlib.image

    page = tmp_path / "board.html"
    paths = [REFERENCE / f"{name}.json" for name in COLUMNS["deepseek-v3-base"]]
    proc = subprocess.run([sys.executable, str(TESTS / "fake_cli.py"), "leaderboard", *map(str, paths), "--layout", "deepseek-v3-base",
                           "--format", "html", "-o", str(page)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1400",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True, cwd=tmp_path)
    image = matplotlib.image.imread(shot)[..., :3]
    assert image.shape[:2] == (1400, 1200)
    dark_rows = np.flatnonzero((image.mean(axis=-1) < 0.3).any(axis=1))
    assert len(dark_rows) > 100, "text of the tables is drawn"
    blue = (np.abs(image - np.array([0.12, 0.47, 0.71])).max(axis=-1) < 0.06).sum()
    assert blue > 1000, "the embedded chart is drawn"


def test_missing_run_is_a_user_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(TESTS / "fake_cli.py"), "leaderboard", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and "nope" in proc.stderr and "not found" in proc.stderr
    proc = subprocess.run([sys.executable, str(TESTS / "fake_cli.py"), "leaderboard", str(REFERENCE / "deepseek-v3-base.json"), "--layout", "v4"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--layout 'v4' is not known" in proc.stderr
