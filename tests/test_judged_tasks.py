"""Judge-scored tasks end to end with scripted judges: replayed verdicts make the Arena-Hard and
AlpacaEval win rates known exactly, the raw verdicts are stored per sample so `dseval score`
re-aggregates without a judge, and a judging pass killed half-way resumes without asking the
judge again for what it already answered."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dseval.backends.base import BackendOptions
from dseval.backends.registry import register_backend
from dseval.backends.replay import ReplayBackend
from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.errors import UserError
from dseval.requests import ChatRequest, GenerateResult
from dseval.runner import evaluate, rescore
from dseval.scoring.length_controlled import length_controlled_win_rate
from dseval.store import RunStore
from dseval.tasks.alpacaeval2 import AlpacaEval2, model_slot
from dseval.tasks.arena_hard import ArenaHard

# doc -> the judge's replies for (game 0: model as B, game 1: model as A)
ARENA_SCRIPT = [
    ("Assistant B is far better. My final verdict: [[B>>A]]", "[[A>>B]]"),  # 2 strong wins: 6 battles won
    ("[[A=B]]", "[[B=A]]"),  # 2 ties
    ("[[A>B]]", "[[B>A]]"),  # 2 losses
    ("no label at all", "[[A>B]]"),  # 1 unparseable, 1 win
]
ARENA_WIN_RATE = (6 + 2 * 0.5 + 0 + 1) / (6 + 2 + 2 + 1)


def write_jsonl(path: Path, rows: Sequence[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class FlakyJudge(ReplayBackend):
    """A replayed judge that records what it is asked and can die after some answers."""

    asked: list[tuple[str, int]] = []
    fail_after: int | None = None

    @classmethod
    def from_spec(cls, arg: str, options: BackendOptions) -> FlakyJudge:
        return cls(Path(arg))

    def chat(self, requests: Sequence[ChatRequest], on_result=None) -> list[GenerateResult]:
        def record(index: int, result: GenerateResult) -> None:
            if FlakyJudge.fail_after is not None and len(FlakyJudge.asked) >= FlakyJudge.fail_after:
                raise RuntimeError("judge died")
            FlakyJudge.asked.append((requests[index].doc_id, requests[index].sample_index))
            on_result(index, result)

        return self.generate(requests, record)


register_backend("flaky-judge", FlakyJudge)


@pytest.fixture()
def arena(tmp_path: Path, data_dir: Path) -> dict:
    task = ArenaHard()
    docs = task.load(DataSource(data_dir))[: len(ARENA_SCRIPT)]
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"id": d.id, "output": f"model answer {i}"} for i, d in enumerate(docs)])
    judge = write_jsonl(tmp_path / "verdicts.jsonl", [{"id": d.id, "output": list(r)} for d, r in zip(docs, ARENA_SCRIPT)])
    config = dict(tasks=("arena_hard",), model=f"replay:{answers}", limit=len(docs), data_dir=str(data_dir))
    return {"docs": docs, "judge": judge, "config": config}


def test_arena_hard_win_rate_from_scripted_verdicts(tmp_path: Path, arena: dict) -> None:
    out = tmp_path / "run"
    summary = evaluate(RunConfig(**arena["config"], out=out, judge=f"replay:{arena['judge']}"))
    result = summary["tasks"]["arena_hard"]
    assert result["metrics"]["win_rate"] == pytest.approx(ARENA_WIN_RATE, abs=1e-9)
    assert result["metrics"]["win_rate_lower"] <= result["metrics"]["win_rate"] <= result["metrics"]["win_rate_upper"]
    assert result["metrics"]["judged"] == pytest.approx(7 / 8)
    samples = RunStore(out).load_samples("arena_hard")
    assert [s.details["verdicts"] for s in samples] == [list(r) for r in ARENA_SCRIPT]
    assert samples[3].details["labels"] == [None, "A>B"]
    assert not (out / "arena_hard" / "verdicts.jsonl").exists()
    # `dseval score` re-aggregates from the stored verdicts alone: no judge, same numbers
    assert rescore(RunStore(out))["tasks"]["arena_hard"] == result


def test_judge_sees_the_model_answer_as_b_then_as_a(arena: dict, tmp_path: Path) -> None:
    task = ArenaHard()
    from dseval.records import Sample

    doc = arena["docs"][0]
    sample = Sample(id=doc.id, index=0, prompt="", target=doc.target, fields={}, outputs=["MINE"])
    first, second = (r.messages[1]["content"] for r in task.judge_requests(sample))
    assert first.index(doc.target["baseline"]) < first.index("MINE")
    assert second.index("MINE") < second.index(doc.target["baseline"])


def test_killed_judging_resumes_without_asking_again(tmp_path: Path, arena: dict) -> None:
    out = tmp_path / "run"
    config = RunConfig(**arena["config"], out=out, judge=f"flaky-judge:{arena['judge']}")
    FlakyJudge.asked, FlakyJudge.fail_after = [], 5  # dies during the third doc's second game
    with pytest.raises(RuntimeError, match="judge died"):
        evaluate(config)
    saved = (out / "arena_hard" / "verdicts.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in saved] == [d.id for d in arena["docs"][:2]]
    FlakyJudge.asked, FlakyJudge.fail_after = [], None
    summary = evaluate(config)
    assert sorted(FlakyJudge.asked) == sorted((d.id, g) for d in arena["docs"][2:] for g in (0, 1))
    assert summary["tasks"]["arena_hard"]["metrics"]["win_rate"] == pytest.approx(ARENA_WIN_RATE, abs=1e-9)
    FlakyJudge.asked = []
    evaluate(config)  # a finished run asks the judge nothing
    assert FlakyJudge.asked == []


def test_a_judged_task_without_judge_stops_before_generating(tmp_path: Path, arena: dict) -> None:
    with pytest.raises(UserError, match="--judge"):
        evaluate(RunConfig(**arena["config"], out=tmp_path / "run"))
    assert not (tmp_path / "run" / "arena_hard" / "samples.jsonl").exists()


def test_alpacaeval_win_rate_and_length_controlled_rate(tmp_path: Path, data_dir: Path) -> None:
    task = AlpacaEval2()
    docs = task.load(DataSource(data_dir))[:10]
    outputs = [("word " * (40 * (i + 1))).strip() for i in range(len(docs))]
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"id": d.id, "output": o} for d, o in zip(docs, outputs)])
    won = [1, 1, 0, 1, None, 0, 1, 1, 0, 1]
    other = {"m": "M", "M": "m"}
    replies = [" garbage" if w is None else (model_slot(d.id) if w else other[model_slot(d.id)]) for d, w in zip(docs, won)]
    judge = write_jsonl(tmp_path / "judge.jsonl", [{"id": d.id, "output": r} for d, r in zip(docs, replies)])
    out = tmp_path / "run"
    summary = evaluate(RunConfig(tasks=("alpacaeval2",), model=f"replay:{answers}", out=out, limit=len(docs),
                                 data_dir=str(data_dir), judge=f"replay:{judge}"))
    metrics = summary["tasks"]["alpacaeval2"]["metrics"]
    assert metrics["win_rate"] == pytest.approx(6 / 9)
    assert metrics["judged"] == pytest.approx(9 / 10)
    prefs = np.array([np.nan if w is None else float(w) for w in won])
    expected = length_controlled_win_rate(prefs, [len(o) for o in outputs], [d.target["reference"].__len__() for d in docs])
    assert metrics["lc_win_rate"] == pytest.approx(expected.win_rate)
    assert rescore(RunStore(out))["tasks"]["alpacaeval2"] == summary["tasks"]["alpacaeval2"]


def test_alpacaeval_difficulty_csv_travels_with_the_samples(tmp_path: Path, data_dir: Path) -> None:
    csv_path = tmp_path / "instruction_difficulty.csv"
    csv_path.write_text("index,instruction_difficulty\n" + "".join(f"{i},{(i % 7) / 3 - 1}\n" for i in range(805)))
    task = AlpacaEval2()
    task.configure({"difficulty": str(csv_path)})
    docs = task.load(DataSource(data_dir))
    assert docs[9].target["difficulty"] == pytest.approx((9 % 7) / 3 - 1)
    csv_path.write_text("index,instruction_difficulty\n0,1.0\n")
    with pytest.raises(UserError, match="difficulty="):
        task.load(DataSource(data_dir))
