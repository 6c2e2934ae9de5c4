"""Baselines: run folders kept under ``results/baselines/`` for the regression gate.

A baseline holds what ``dseval compare`` needs to pair docs and nothing that is benchmark
data: run.json, summary.json, and per task a samples.jsonl whose records keep the id, index,
metrics and loglikelihoods but replace prompt, target and generated text by their sha256. The
digests still prove that a new run saw the same prompt and gold for each doc, and (with
``--exact``) that it produced the same text, while the repository never carries the
benchmark's questions, answers or test code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dseval.data import read_json, read_jsonl
from dseval.errors import UserError
from dseval.provenance import content_hash
from dseval.store import write_json_atomic


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digests(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a sample that pairing and exact comparison look at, from a full record
    (a run's samples.jsonl) or a compact one (a baseline's), so either side can be either."""
    if "prompt_sha256" in record:
        return {key: record.get(key) for key in ("prompt_sha256", "target_sha256", "output_sha256")}
    output = record.get("output")
    outputs = None if output is None else (output if isinstance(output, list) else [output])
    return {
        "prompt_sha256": text_digest(record.get("prompt", "")),
        "target_sha256": content_hash(record.get("target")),
        "output_sha256": None if outputs is None else [text_digest(o) for o in outputs],
    }


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """A baseline record: ids, numbers and digests only."""
    out: dict[str, Any] = {"id": record["id"], "index": record["index"], **digests(record)}
    for key in ("loglikelihoods", "is_greedy", "metrics"):
        if key in record:
            out[key] = record[key]
    return out


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Sample records of one finished samples.jsonl; each must have an id and an index."""
    for number, record in enumerate(read_jsonl(path), 1):
        if "id" not in record or "index" not in record:
            raise UserError(f"{path}:{number}: not a sample record (needs 'id' and 'index')")
        yield record


def update_baseline(run_dir: Path, name: str | None, root: Path) -> Path:
    """Replace ``root/name`` with a compact copy of a finished run folder (built beside it and
    renamed, so a failure leaves the old baseline in place)."""
    for needed in ("run.json", "summary.json"):
        if not (run_dir / needed).is_file():
            raise UserError(f"{run_dir / needed} not found: pass a finished run folder written by `dseval run`")
    run = read_json(run_dir / "run.json")
    target = root / (name or run_dir.resolve().name)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for task in run.get("tasks", {}):
            source = run_dir / task / "samples.jsonl"
            if not source.is_file():
                raise UserError(f"{source} not found: the baseline needs every task's samples to pair docs")
            (staging / task).mkdir()
            lines = [json.dumps(compact(record), ensure_ascii=False) + "\n" for record in read_records(source)]
            (staging / task / "samples.jsonl").write_text("".join(lines), encoding="utf-8")
        for file in ("run.json", "summary.json"):
            write_json_atomic(staging / file, read_json(run_dir / file))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
