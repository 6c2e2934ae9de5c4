"""Rewrite the tables of bench/README.md from the committed JSON under results/bench/.

    python bench/report.py            # rewrite the README's tables in place
    python bench/report.py --check    # exit 1 if the README's tables differ from the JSON

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` and is built by
``bench/tables.py:TABLES[NAME]`` from the files it reads. A new run goes in by replacing its
file under results/bench/ and running this script, so the README cannot drift from the
evidence; ``--check`` also fails when a committed JSON feeds no table (a stale run left behind)
or a table's marker is missing from the README.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from tables import TABLES

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"(<!-- table:(\w+) -->\n)(?:.*?\n)?(<!-- /table:\2 -->)", re.S)


def render(readme: str, results: Path) -> tuple[str, set[str]]:
    """The README with every marked table rebuilt, and the JSON names the tables read."""
    used: set[str] = set()
    this: list[str] = []  # the files the table being built reads, in order

    def load(name: str) -> dict[str, Any]:
        if name not in this:
            this.append(name)
        return json.loads((results / f"{name}.json").read_text())

    def table(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise SystemExit(f"bench/README.md: unknown table marker '{name}' (known: {', '.join(TABLES)})")
        this.clear()
        body = TABLES[name](load)
        used.update(this)
        source = ", ".join(f"`results/bench/{n}.json`" for n in this)
        return f"{m.group(1)}{body}\n\nFrom {source}.\n{m.group(3)}"

    return MARKER.sub(table, readme), used


def problems(readme: str, results: Path) -> list[str]:
    """What keeps the README from being the committed JSON's current report."""
    out, used = render(readme, results)
    found = {m.group(2) for m in MARKER.finditer(readme)}
    issues = [f"table '{n}' has no marker in the README" for n in TABLES if n not in found]
    issues += [f"results/bench/{p.name} feeds no table (not current: delete it, git keeps it)"
               for p in sorted(results.glob("*.json")) if p.stem not in used]
    if out != readme:
        issues.append("the README's tables differ from the JSON: run python bench/report.py")
    return issues


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=Path, default=ROOT / "bench" / "README.md")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "bench")
    ap.add_argument("--check", action="store_true", help="report differences instead of rewriting")
    args = ap.parse_args()
    readme = args.readme.read_text()
    if args.check:
        issues = problems(readme, args.results)
        for issue in issues:
            print(f"{args.readme}: {issue}", file=sys.stderr)
        return 1 if issues else 0
    out, _ = render(readme, args.results)
    args.readme.write_text(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
