"""Needle-in-a-haystack: exact prompt lengths, needle placement, RULER scoring, grids, growing a
run folder, and the heatmap and bar chart."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dseval.backends.base import ModelBackend
from dseval.cli import app
from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.errors import UserError
from dseval.niah import GRIDS, choose_grid, parse_length, parse_values, wilson, write_report
from dseval.records import Sample
from dseval.requests import GenerateRequest, GenerateResult
from dseval.runner import evaluate
from dseval.store import RunStore
from dseval.task import PromptContext
from dseval.tasks.niah import NOISE, NeedleInAHaystack

BASE = PromptContext(shots=0, chat=False, seed=0, samples=1, render_chat=lambda m: "")
CHAT = PromptContext(shots=0, chat=True, seed=0, samples=1,
                     render_chat=lambda m: f"<｜begin▁of▁sentence｜><｜User｜>{m[-1]['content']}<｜Assistant｜>")
PNG = b"\x89PNG\r\n\x1a\n"


class FirstHalfReader(ModelBackend):
    """Finds the needle only when it sits in the first half of the prompt; counts its requests."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def generate(self, requests: Sequence[GenerateRequest], on_result=None) -> list[GenerateResult]:
        results = []
        for i, request in enumerate(requests):
            self.seen.append(request.doc_id)
            found = re.search(r"vault is (\d+)\.", request.prompt)
            text = f" {found.group(1)}." if found and found.start() <= len(request.prompt) / 2 else " 1234567."
            results.append(GenerateResult(text))
            if on_result:
                on_result(i, results[-1])
        return results

    def loglikelihood(self, requests, on_result=None):
        raise NotImplementedError


def loaded(data_dir: Path, **kwargs) -> NeedleInAHaystack:
    task = NeedleInAHaystack(**kwargs)
    task.docs = task.load(DataSource(data_dir))
    return task


@pytest.fixture(scope="module")
def task(data_dir: Path) -> NeedleInAHaystack:
    return loaded(data_dir, lengths=(2048, 8192), depths=(0, 25, 50, 75, 100), haystack="drop")


def test_lengths_and_ranges() -> None:
    assert (parse_length("4k"), parse_length("128K"), parse_length("3000")) == (4096, 131072, 3000)
    assert parse_values("4k:128k:x2", "lengths", parse_length) == (4096, 8192, 16384, 32768, 65536, 131072)
    assert parse_values("0:100:25", "depths") == (0, 25, 50, 75, 100)
    assert parse_values("1k,2k,1k:4k:1k", "lengths", parse_length) == (1024, 2048, 3072, 4096)
    for bad in ("0:100:0", "4k:128k:x1", "8k:4k:1k", "1k:2k", "ten"):
        with pytest.raises(UserError, match="--lengths"):
            parse_values(bad, "lengths", parse_length)


def test_grid_presets() -> None:
    lengths, depths = GRIDS["deepseek"]
    assert len(lengths) == len(depths) == 15 and (lengths[0], lengths[-1]) == (2048, 131072)
    assert len({b - a for a, b in zip(lengths, lengths[1:])}) == 1 and (depths[0], depths[7], depths[-1]) == (0, 50, 100)
    assert choose_grid("readme", None, None)["lengths"] == (4096, 8192, 16384, 32768, 65536, 98304, 131072)
    assert choose_grid("deepseek", "4k", None) == {"lengths": (4096,), "depths": depths}
    with pytest.raises(UserError, match="--grid 'paper'"):
        choose_grid("paper", None, None)


def test_wilson_interval() -> None:
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook example
    low, high = wilson(5, 5)
    assert high == 1.0 and 0.5 < low < 0.6


def test_prompts_have_exactly_the_length_and_place_the_needle(task: NeedleInAHaystack) -> None:
    positions = {}
    for doc in task.docs:
        prompt, [request] = task.build(doc, BASE)
        assert task.count(prompt) == doc.fields["length"], doc.id  # BOS + prompt tokens
        assert prompt.count("secret code of the") == 3  # needle, question, answer prefix
        assert "\n" not in request.stop and request.max_tokens >= 32
        positions[doc.id] = prompt.index("Remember this:") / prompt.index("\n\nQuestion:")  # depth within the haystack
    for length in (2048, 8192):
        depth_order = [positions[f"niah/{length}/{d}/0"] for d in (0, 25, 50, 75, 100)]
        assert depth_order == sorted(depth_order) and depth_order[0] < 0.02 and depth_order[-1] > 0.95
        assert abs(positions[f"niah/{length}/50/0"] - 0.5) < 0.05


@pytest.mark.parametrize("haystack", ["noise", "file"])
def test_noise_and_file_haystacks_chat_and_base(haystack: str, tmp_path: Path) -> None:
    if haystack == "file":
        (tmp_path / "essay.txt").write_text("A hedgehog walked to Mars. " * 50 + "It came back soon!\n" * 20)
        haystack = str(tmp_path / "essay.txt")
    niah = loaded(tmp_path, lengths=(1000, 3001), depths=(0, 37, 100), haystack=haystack, samples=2)
    assert len(niah.docs) == 12
    for doc in niah.docs:
        for ctx in (BASE, CHAT):
            prompt, [request] = niah.build(doc, ctx)
            ids = niah.tokenizer.encode(prompt, add_special_tokens=False).ids
            assert (ids[0] == 0) == ctx.chat  # the chat template writes the BOS; backends add it to base prompts
            assert len(ids) + (not ctx.chat) == doc.fields["length"], (doc.id, ctx.chat)
        assert request.stop == () and request.max_tokens == 128  # chat: no newline stop, room for a sentence
    body = niah.build(niah.docs[0], BASE)[0]
    assert ("grass is green" in body) == (haystack == "noise") and ("hedgehog" in body) != (haystack == "noise")


def test_samples_differ_and_cells_are_stable(data_dir: Path, task: NeedleInAHaystack) -> None:
    niah = loaded(data_dir, lengths=(2048,), depths=(50,), samples=3, haystack="drop")
    assert [d.id for d in niah.docs] == ["niah/2048/50/0", "niah/2048/50/1", "niah/2048/50/2"]
    assert len({d.target["code"] for d in niah.docs}) == 3
    same = next(d for d in task.docs if d.id == "niah/2048/50/0")
    assert niah.build(niah.docs[0], BASE)[0] == task.build(same, BASE)[0]


def test_bad_haystack_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--haystack .*missing\.txt"):
        loaded(tmp_path, lengths=(1024,), depths=(0,), haystack=str(tmp_path / "missing.txt"))
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(UserError, match=r"short\.txt: holds 4 characters"):
        loaded(tmp_path, lengths=(1024,), depths=(0,), haystack=str(tmp_path / "short.txt"))


def test_scoring_is_rulers_substring_match() -> None:
    def score(output: str) -> float:
        sample = Sample(id="x", index=0, prompt="", target={"place": "Oslo", "code": "4821907"}, fields={}, outputs=[output])
        return NeedleInAHaystack().score([sample])[0]["acc"]

    assert score(" 4821907.") == 1.0
    assert score("Sure!\n\nThe secret code of the Oslo vault is **4821907**.") == 1.0  # a chat answer's second line
    assert score("code\x00 4821907") == 1.0
    assert score(" 4,821,907") == 0.0 and score(" 482190") == 0.0 and score("") == 0.0


def run_sweep(out: Path, backend: ModelBackend, **grid) -> dict:
    config = RunConfig(tasks=("niah",), model="first-half", out=out, data_dir=str(out.parent))
    return evaluate(config, backend, tasks=[NeedleInAHaystack(**grid)])


def test_sweep_grid_heatmap_and_bars(tmp_path: Path) -> None:
    summary = run_sweep(tmp_path / "run", FirstHalfReader(), lengths=(2048, 8192), depths=(0, 25, 50, 75, 100),
                        samples=2)
    assert summary["tasks"]["niah"]["metrics"]["acc"] == pytest.approx(12 / 20)  # depths 0, 25, 50 of 2 lengths
    table = write_report(RunStore(tmp_path / "run"))
    assert table["depths"] == [0, 25, 50, 75, 100] and table["lengths"] == [2048, 8192]
    assert [row[0] for row in table["acc"]] == [1.0, 1.0, 1.0, 0.0, 0.0] and table["n"][0] == [2, 2]
    assert table["lower"][0][0] == pytest.approx(wilson(2, 2)[0]) and table["upper"][4][1] == pytest.approx(wilson(0, 2)[1])
    assert table["by_length"]["acc"] == [0.6, 0.6] and table["by_length"]["n"] == [10, 10]
    assert json.loads((tmp_path / "run" / "niah.json").read_text()) == table
    for picture in ("niah.png", "niah_lengths.png"):
        assert (tmp_path / "run" / picture).read_bytes()[:8] == PNG


def test_report_draws_an_existing_run_without_a_model(tmp_path: Path) -> None:
    run_sweep(tmp_path / "run", FirstHalfReader(), lengths=(1024,), depths=(0, 100))
    result = CliRunner().invoke(app, ["niah", "--report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "100%" in result.output and "0%" in result.output
    assert (tmp_path / "run" / "niah_lengths.png").read_bytes()[:8] == PNG
    result = CliRunner().invoke(app, ["niah", "--report", str(tmp_path)])
    assert result.exit_code == 2 and "no run.json" in result.output
    result = CliRunner().invoke(app, ["niah", "--model", "tiny", "--haystack", str(tmp_path / "none.txt"), "--lengths", "1k",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "none.txt" in result.output


def test_a_run_folder_grows_with_its_grid(tmp_path: Path) -> None:
    out, first = tmp_path / "run", FirstHalfReader()
    run_sweep(out, first, lengths=(2048,), depths=(0, 100))
    before = {s.id: s.outputs for s in RunStore(out).load_samples("niah")}
    with (out / "niah" / "samples.jsonl").open("a") as torn:  # a kill in the middle of a write
        torn.write('{"id": "niah/1024/0/0", "ind')
    again = FirstHalfReader()
    summary = run_sweep(out, again, lengths=(1024, 2048), depths=(0, 50, 100), samples=2)
    assert sorted(again.seen) == sorted({f"niah/{n}/{d}/{s}" for n in (1024, 2048) for d in (0, 50, 100) for s in (0, 1)}
                                        - set(before))  # only the new cells ran
    samples = RunStore(out).load_samples("niah")
    assert [s.index for s in samples] == list(range(12)) and summary["tasks"]["niah"]["n_total"] == 12
    assert {s.id: s.outputs for s in samples if s.id in before} == before
    with pytest.raises(UserError, match="can grow .* but not shrink"):
        run_sweep(out, FirstHalfReader(), lengths=(2048,), depths=(0, 50, 100), samples=2)
    (tmp_path / "prose.txt").write_text("Another text entirely. " * 40)
    with pytest.raises(UserError, match="prompt differs .*--haystack"):
        run_sweep(out, FirstHalfReader(), lengths=(1024, 2048), depths=(0, 50, 100), samples=2,
                  haystack=str(tmp_path / "prose.txt"))


def test_cli_grid_samples_and_haystack_reach_the_task(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dseval.runner as runner

    seen = {}
    monkeypatch.setattr(runner, "evaluate", lambda config, tasks=None: seen.update(tasks=tasks) or {})
    args = ["niah", "--model", "tiny", "--grid", "deepseek", "--lengths", "4k:16k:x2", "--samples", "3", "--haystack", "drop"]
    assert CliRunner().invoke(app, args).exit_code == 0
    [niah] = seen["tasks"]
    assert niah.lengths == (4096, 8192, 16384) and niah.depths == GRIDS["deepseek"][1]
    assert (niah.samples, niah.haystack_name) == (3, "drop")
    result = CliRunner().invoke(app, ["niah", "--lengths", "1k"])
    assert result.exit_code == 2 and "--model" in result.output and "--report" in result.output
