"""A killed and resumed run with the real engine (tiny preset, CPU): what the README promises.

Samples written before the kill are kept byte for byte and every doc is answered once. Docs
computed after the resume ran in other batches and against another prefix cache, and the engine's
GEMMs round by batch shape, so their log-likelihoods agree with an uninterrupted run's to within
float32 rounding (not bit for bit); an uninterrupted rerun with the same settings is bitwise equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dseval.backends.base import BackendOptions
from dseval.backends.registry import load_backend
from dseval.config import RunConfig
from dseval.runner import evaluate

IDS = tuple(f"mmlu/test/{i}" for i in range(0, 10000, 1000))  # 10 docs, 40 requests
KILL_AFTER = 18  # results: the kill lands inside the fourth or fifth doc


class Killed(Exception):
    pass


class KilledAfter:
    """The engine backend, stopped dead after ``k`` results (the runner keeps what it flushed)."""

    def __init__(self, inner, k: int) -> None:
        self.inner, self.k = inner, k

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def loglikelihood(self, requests, on_result=None):
        count = [0]

        def report(index, result):
            on_result(index, result)
            count[0] += 1
            if count[0] == self.k:
                raise Killed

        return self.inner.loglikelihood(requests, report)


def fresh_engine():
    """A new backend per run, as a new process would have (empty prefix cache)."""
    return load_backend("tiny", BackendOptions(batch_size=8, device="cpu"))


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "mmlu" / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_engine_kill_and_resume(tmp_path: Path, data_dir: Path) -> None:
    def config(name: str) -> RunConfig:
        return RunConfig(tasks=("mmlu",), model="tiny", out=tmp_path / name, ids=IDS, data_dir=str(data_dir),
                         options=BackendOptions(batch_size=8, device="cpu"))

    evaluate(config("reference"), fresh_engine())
    evaluate(config("rerun"), fresh_engine())
    reference = records(tmp_path / "reference")
    timing = json.loads((tmp_path / "rerun" / "timing.json").read_text())
    mmlu = timing["tasks"]["mmlu"]  # where the time went: the engine's counters over this task
    assert timing["load_s"] is None and mmlu["docs"] == len(IDS) and 0 < mmlu["first_doc_s"] <= mmlu["wall_s"]
    assert mmlu["prefill_tokens"] + mmlu["prefix_hit_tokens"] == sum(sum(r["prompt_tokens"]) for r in reference)
    assert mmlu["generated_tokens"] == 0 and mmlu["prefill_tok_per_s"] > 0
    assert (tmp_path / "rerun" / "mmlu" / "samples.jsonl").read_bytes() == \
        (tmp_path / "reference" / "mmlu" / "samples.jsonl").read_bytes(), "same settings, same bits"

    with pytest.raises(Killed):
        evaluate(config("killed"), KilledAfter(fresh_engine(), KILL_AFTER))
    before = {r["id"]: r for r in records(tmp_path / "killed")}
    assert 0 < len(before) < len(IDS)
    evaluate(config("killed"), fresh_engine())
    after = records(tmp_path / "killed")

    assert [r["id"] for r in after] == [r["id"] for r in reference], "every doc once, in reference order"
    assert all(after_r == before[after_r["id"]] for after_r in after if after_r["id"] in before), "kept as written"
    for ref, got in zip(reference, after, strict=True):
        assert got["loglikelihoods"] == pytest.approx(ref["loglikelihoods"], abs=1e-5, rel=0), got["id"]
        assert got["metrics"] == ref["metrics"] and got["prompt_tokens"] == ref["prompt_tokens"]
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())["tasks"]["mmlu"]
    assert summary == json.loads((tmp_path / "reference" / "summary.json").read_text())["tasks"]["mmlu"]
