"""`dseval serve --model tiny` as a stand-in judge: a real OpenAI-compatible chat server judges
Arena-Hard and AlpacaEval answers. Its random-weight replies carry no verdict, so the run must
store them raw, count them as unparsed, and still finish with a summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_serve import KEY, server  # noqa: F401 - the module-scoped server fixture

from dseval.config import RunConfig
from dseval.runner import evaluate
from dseval.store import RunStore
from dseval.tasks import arena_hard
from dseval.tasks.arena_hard import parse_verdict

pytestmark = pytest.mark.slow


def test_tiny_server_as_judge(server: str, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setattr(arena_hard, "JUDGE_TOKENS", 24)  # random weights never stop by themselves
    ids = ["328c149ed45a41c0b9d6f14659e63599", "b43c07656ead4150b360294ee932b410", "alpacaeval/0", "alpacaeval/1"]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": i, "output": f"An answer to {i}."}) + "\n" for i in ids))
    out = tmp_path / "run"
    summary = evaluate(RunConfig(tasks=("arena_hard", "alpacaeval2"), model=f"replay:{answers}", out=out, limit=2,
                                 data_dir=str(data_dir), judge=f"openai-chat:{server}/v1#tiny"))
    store = RunStore(out)
    arena = store.load_samples("arena_hard")
    assert [len(s.details["verdicts"]) for s in arena] == [2, 2]
    assert all(isinstance(v, str) and v for s in arena for v in s.details["verdicts"])
    parsed = [parse_verdict(v) is not None for s in arena for v in s.details["verdicts"]]
    assert summary["tasks"]["arena_hard"]["metrics"]["judged"] == pytest.approx(sum(parsed) / len(parsed))
    if not any(parsed):  # what random weights give: no battle, so no win rate, and the run still finishes
        assert undefined(summary["tasks"]["arena_hard"]["metrics"]["win_rate"])
    alpaca = store.load_samples("alpacaeval2")
    assert [len(s.details["verdicts"]) for s in alpaca] == [1, 1]
    assert undefined(summary["tasks"]["alpacaeval2"]["metrics"]["lc_win_rate"])  # two docs: nothing to fit


def undefined(value: float | None) -> bool:
    """A metric with nothing to compute from: null in summary.json (NaN before it is written)."""
    return value is None or math.isnan(value)
    assert json.loads((out / "summary.json").read_text().replace("NaN", "null"))["tasks"].keys() == {"arena_hard", "alpacaeval2"}
