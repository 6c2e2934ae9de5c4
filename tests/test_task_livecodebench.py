"""LiveCodeBench: prompts from the 279 real problems (statements read back losslessly from the
Qwen prompt file), the official base and chat prompt layouts, the date window, and scoring in
the sandbox on problems with tests written in the official release format
(tests/fixtures/livecodebench_release.jsonl: stdin and functional tests, public and packed
private ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import replay_run
from dseval.records import Sample
from dseval.task import PromptContext, get_task
from dseval.tasks.livecodebench import QWEN_OPENING, QWEN_STARTER, WITHOUT_STARTER, decode_tests

from dseval.data import DataSource
from dseval.errors import UserError

FIXTURE = Path(__file__).parent / "fixtures" / "livecodebench_release.jsonl"
BASE = PromptContext(shots=1, chat=False, seed=0, samples=1, render_chat=lambda m: "")
GOLD = {
    "livecodebench/fixture_a": "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
    "livecodebench/fixture_b": "import sys\ndata = sys.stdin.buffer.read().split()\nn = int(data[0])\nprint(sum(map(int, data[1:n + 1])) / n)\n",
    "livecodebench/9001": "class Solution:\n    def pairSums(self, nums: List[int], k: int) -> List[int]:\n"
                          "        return sorted(s for s in (x + y for x, y in combinations(nums, 2)) if s >= k)\n",
}


def _task(**options: str):
    return get_task("livecodebench", {"path": str(FIXTURE), **options})


def test_real_problems_read_back_losslessly(data_dir: Path) -> None:
    """Each of the 279 statements and starter codes, put back into the Qwen template, gives
    the file's prompt exactly; the report's window holds 223 of them."""
    rows = [json.loads(line) for line in (data_dir / "livecodebench" / "livecodebench_v5.jsonl").read_text().splitlines()]
    problems = get_task("livecodebench").problems(DataSource(data_dir))
    assert len(problems) == len(rows) == 279
    for row, problem in zip(rows, problems, strict=True):
        if problem["starter"]:
            rebuilt = f"{QWEN_OPENING}{problem['content']}{QWEN_STARTER}{problem['starter']}\n```"
        else:
            rebuilt = f"{QWEN_OPENING}{problem['content']}\n\n{WITHOUT_STARTER}"
        assert row["prompt"].startswith(rebuilt), row["question_id"]
    window = get_task("livecodebench", {"since": "2024-08-01", "until": "2024-11-30"}).problems(DataSource(data_dir))
    assert len(window) == 223 and min(p["date"] for p in window) == "2024-08-03" and max(p["date"] for p in window) == "2024-11-30"
    with pytest.raises(UserError, match="223 problems have no tests"):
        get_task("livecodebench", {"since": "2024-08-01", "until": "2024-11-30"}).load(DataSource(data_dir))


def test_official_prompt_layouts(tmp_path: Path) -> None:
    task = _task()
    docs = {d.id: d for d in task.load(DataSource(tmp_path))}
    stdin_prompt, requests = task.build(docs["livecodebench/fixture_a"], BASE)
    assert stdin_prompt.startswith("### Question\nYou have $n$ gifts") and "### Starter Code" not in stdin_prompt
    assert stdin_prompt.endswith("\n\nmain()\n\n\n### Question\nGiven two integers A and B, print A+B.\n\nInput\n\nA B\n\nOutput\n\nPrint A+B.\n\n### Answer\n\n")
    assert requests[0].stop == ("###",)
    func_prompt, _ = task.build(docs["livecodebench/9001"], PromptContext(shots=0, chat=False, seed=0, samples=1, render_chat=lambda m: ""))
    assert func_prompt == ("### Question\nGiven a list nums and an integer k, return the sorted pairwise sums that are at least k.\n\n"
                           "### Starter Code\nclass Solution:\n    def pairSums(self, nums: List[int], k: int) -> List[int]:\n        \n\n"
                           "### Answer\n\n")
    chat = PromptContext(shots=0, chat=True, seed=0, samples=1, render_chat=lambda m: json.dumps(m))
    messages = json.loads(task.build(docs["livecodebench/fixture_a"], chat)[0])
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("You are an expert Python programmer.")
    assert messages[1]["content"].endswith("### Format: Read the inputs from stdin solve the problem and write the answer to stdout "
                                           "(do not directly test on the sample inputs). Enclose your code within delimiters as follows.\n"
                                           "```python\n# YOUR CODE HERE\n```\n\n### Answer: (use the provided format with backticks)\n\n")


def test_date_window_and_packed_private_tests(tmp_path: Path) -> None:
    ids = [d.id for d in _task(since="2024-08-01", until="2024-11-30").load(DataSource(tmp_path))]
    assert ids == ["livecodebench/fixture_a", "livecodebench/fixture_b", "livecodebench/9001"]
    assert [d.id for d in _task(until="2024-07-31").load(DataSource(tmp_path))] == ["livecodebench/fixture_old"]
    doc = _task().load(DataSource(tmp_path))[0]
    assert decode_tests(doc.target["private"])[0] == {"input": "100 -5\n", "output": "95\n", "testtype": "stdin"}
    with pytest.raises(UserError, match="--since '2024/08/01'"):
        _task(since="2024/08/01")


def test_solutions_checked_against_every_test(tmp_path: Path) -> None:
    task = _task()
    docs = {d.id: d for d in task.load(DataSource(tmp_path))}
    cases = [
        ("livecodebench/fixture_a", GOLD["livecodebench/fixture_a"], "passed"),
        ("livecodebench/fixture_a", "print(3)", "failed"),  # passes the public test only
        ("livecodebench/fixture_b", GOLD["livecodebench/fixture_b"], "passed"),  # "1.5" == "1.50" as decimals
        ("livecodebench/fixture_b", "print('1.5 ')\n", "failed"),
        ("livecodebench/9001", GOLD["livecodebench/9001"], "passed"),
        ("livecodebench/9001", "class Solution:\n    def pairSums(self, nums, k):\n        return (3, 4, 5)\n", "failed"),
        ("livecodebench/9001", "class Solution:\n    def pairSums(self, nums, k):\n        while True: pass\n", "failed"),
    ]
    samples = [Sample(id=i, index=n, prompt="", target=docs[i].target, fields={}, outputs=[out]) for n, (i, out, _) in enumerate(cases)]
    task.score(samples)
    got = [s.details["exec"][0]["status"] for s in samples]
    assert got == [status for _, _, status in cases], [s.details["exec"] for s in samples]
    assert "test 2 (functional): wrong answer" in samples[1 + 4].details["exec"][0]["reason"]
    assert "test 1: time limit (6 s) exceeded" in samples[-1].details["exec"][0]["reason"]


def test_gold_solutions_through_replay(tmp_path: Path) -> None:
    records = [{"id": i, "output": code} for i, code in GOLD.items()]
    summary = replay_run(tmp_path, "livecodebench", records, tmp_path, "--task-arg", f"path={FIXTURE}", "--since", "2024-08-01", "--until", "2024-11-30")
    assert summary["n"] == 3 and summary["metrics"]["pass@1"] == 1.0 and summary["metrics"]["exec/passed"] == 3
