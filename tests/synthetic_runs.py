"""Finished run folders written directly, for tests of what reads them (gate, leaderboard):
exact per-doc scores without running a model."""

from __future__ import annotations

import json
from pathlib import Path

from dseval.config import RunConfig


def write_run(root: Path, scores: dict[str, list[float]], metric: str = "acc", shots: int = 0, **config: object) -> Path:
    """Per task, docs ``<task>/0..n-1`` with the given scores; ``config`` overrides run.json's."""
    identity = {**RunConfig.identity_defaults(), "model": root.name, **config}
    tasks, summaries = {}, {}
    for task, values in scores.items():
        (root / task).mkdir(parents=True)
        lines = [json.dumps({"id": f"{task}/{i}", "index": i, "prompt": f"q{i}", "target": i, "output": "x", "metrics": {metric: v}})
                 for i, v in enumerate(values)]
        (root / task / "samples.jsonl").write_text("\n".join(lines) + "\n")
        tasks[task] = {"version": "1", "shots": shots, "n_docs": len(values), "prompt_hash": f"p{shots}", "data_fingerprint": f"d{len(values)}"}
        mean = sum(values) / len(values)
        stderr = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1) / len(values)) ** 0.5
        summaries[task] = {"metrics": {metric: mean}, "stderr": {metric: stderr}, "n": len(values), "headline": metric}
    (root / "run.json").write_text(json.dumps({"model": root.name, "config": identity, "tasks": tasks}))
    (root / "summary.json").write_text(json.dumps({"model": root.name, "tasks": summaries}))
    return root
