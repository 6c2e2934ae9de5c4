"""Suites: the shipped DeepSeek-V3 suites name registered tasks with the report's shots; ``dseval
run --suite`` runs each task with its own shots and options and ends with the report-layout
table; bad suites and conflicting flags are one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from dseval.task import all_tasks

from dseval.errors import UserError
from dseval.suites import load_suite

FIXTURE = Path(__file__).parent / "fixtures" / "livecodebench_release.jsonl"


def _dseval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dseval", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})


def test_shipped_suites_follow_the_report() -> None:
    base, chat = load_suite("deepseek-v3-base"), load_suite("deepseek-v3-chat")
    assert not base.chat and chat.chat
    registered = all_tasks()
    assert all(t.name in registered for t in base.tasks + chat.tasks)
    # Table 3's "# Shots" column (LiveCodeBench: the official base prompt's one example, see the file)
    assert dict(base.task_shots()) == {"mmlu": 5, "bbh": 3, "drop": 3, "humaneval": 0, "mbpp": 3, "livecodebench": 1,
                                       "cruxeval_i": 2, "cruxeval_o": 2, "gsm8k": 8, "math": 4}
    assert ("livecodebench", "since", "2024-08-01") in base.task_args() and ("livecodebench", "until", "2024-11-30") in base.task_args()


def test_suite_runs_each_task_with_its_shots(tmp_path: Path, data_dir: Path) -> None:
    suite = tmp_path / "mini.toml"
    suite.write_text('description = "Mini table"\n[[task]]\nname = "bbh"\nshots = 1\n[[task]]\nname = "gsm8k"\nshots = 2\n'
                     '[[task]]\nname = "livecodebench"\nshots = 0\nargs = { since = "2024-09-01", until = "2024-09-30" }\n')
    firsts = {f.stem: json.loads(f.read_text())["examples"][0]["target"] for f in (data_dir / "bbh" / "bbh").glob("*.json")}
    records = [{"id": f"bbh/{name}/0", "output": f"So the answer is {target}."} for name, target in firsts.items()]
    records += [{"id": "gsm8k/test/0", "output": "The answer is 18."},
               {"id": "livecodebench/9001", "output": "class Solution:\n    def pairSums(self, nums, k):\n"
                                                        "        return sorted(x + y for x, y in combinations(nums, 2) if x + y >= k)\n"}]
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "run"
    done = _dseval("run", "--suite", str(suite), "--model", f"replay:{replay}", "--data-dir", str(data_dir), "--out", str(out),
                   "--ids", "bbh/boolean_expressions/0,gsm8k/test/0", "--task-arg", f"path={FIXTURE}")
    assert done.returncode == 2 and "unknown id(s)" in done.stderr  # --ids applies to every task
    done = _dseval("run", "--suite", str(suite), "--model", f"replay:{replay}", "--data-dir", str(data_dir), "--out", str(out),
                   "--limit", "1", "--task-arg", f"path={FIXTURE}")
    assert done.returncode == 0, done.stderr
    run = json.loads((out / "run.json").read_text())
    assert {name: record["shots"] for name, record in run["tasks"].items()} == {"bbh": 1, "gsm8k": 2, "livecodebench": 0}
    prompts = {name: json.loads((out / name / "samples.jsonl").read_text().splitlines()[0])["prompt"] for name in run["tasks"]}
    assert prompts["bbh"].count("A: Let's think step by step.") == 2 and prompts["gsm8k"].count("\nA:") == 3
    assert prompts["livecodebench"].startswith("### Question\nGiven a list nums")  # 0-shot, September 2024 only
    table = done.stdout[done.stdout.index("Mini table"):]
    rows = {cells[2]: cells[3:5] for cells in (line.split("|") for line in table.splitlines() if line.startswith("| "))}
    assert rows[" BBH (EM) "] == [" 1-shot ", " 100.0* "] and rows[" GSM8K (EM) "] == [" 2-shot ", " 100.0* "]
    assert rows[" LiveCodeBench (Pass@1) "] == [" 0-shot ", " 100.0* "]  # * marks a --limit run


@pytest.mark.parametrize(("args", "message"), [
    (["mmlu", "--suite", "deepseek-v3-base"], "either task names or --suite"),
    (["--suite", "no-such-suite"], "known suites: deepseek-v3-base, deepseek-v3-chat"),
    (["--suite", "deepseek-v3-base", "--shots", "1"], "--shots would override"),
    (["--suite", "deepseek-v3-base", "--chat"], "is for base models"),
    (["bbh", "--since", "2024-01-01"], "--task-arg since: none of the tasks bbh has that option"),
    (["bbh", "--task-arg", "oops"], "expected KEY=VALUE"),
])
def test_conflicting_flags_are_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    done = _dseval("run", *args, "--model", "tiny", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_bad_suite_files_name_the_field(tmp_path: Path) -> None:
    cases = {"no_tasks.toml": ("chat = false\n", "at least one [[task]]"),
             "bad_shots.toml": ('[[task]]\nname = "bbh"\nshots = "3"\n', "[[task]] #1: field 'shots' must be int"),
             "twice.toml": ('[[task]]\nname = "bbh"\n[[task]]\nname = "bbh"\n', "listed twice (bbh)"),
             "broken.toml": ("[[task]\n", "not valid TOML")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_suite(str(tmp_path / name))


@pytest.mark.slow
def test_base_suite_on_the_tiny_model(tmp_path: Path, data_dir: Path) -> None:
    """The whole base table, one doc per task (per subject/subtask), 4 new tokens each."""
    done = _dseval("run", "--suite", "deepseek-v3-base", "--model", "tiny", "--device", "cpu", "--limit", "1", "--max-tokens", "4",
                   "--task-arg", f"path={FIXTURE}", "--data-dir", str(data_dir), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["tasks"]) == [t.name for t in load_suite("deepseek-v3-base").tasks]
    assert summary["tasks"]["mmlu"]["n"] == 57 and summary["tasks"]["bbh"]["n"] == 27
    assert "DeepSeek-V3 technical report, Table 3" in done.stdout and "| CRUXEval-O (Pass@1) |" in done.stdout
    assert "**Academic (base models)**" in done.stdout and "**Other benchmarks**" in done.stdout
