"""Runs that never show a wrong number as final: one writer per run folder, non-finite answers
stop the run, partial results say so, a resume refuses changed inputs with a precise reason,
and every bad input is one line naming the culprit (exit 2) with finished work kept."""

from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.errors import UserError
from dseval.runner import evaluate
from dseval.store import RunStore
from dseval.task import PromptContext, get_task
from fake_model import FakeBackend

TESTS = Path(__file__).parent
IDS = ",".join(f"mmlu/test/{i}" for i in range(0, 1200, 100))  # 12 docs


def dseval(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TESTS / "fake_cli.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["run", "mmlu", "--model", "fake:hash", "--out", str(out), "--data-dir", str(data_dir), "--ids", IDS, *extra]


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())  # rich wraps long lines at the terminal width
    for needle in needles:
        assert needle in message, message
    return message


def samples(out: Path, task: str = "mmlu") -> list[dict]:
    return [json.loads(line) for line in (out / task / "samples.jsonl").read_text().splitlines()]


# ---- 1. one writer per folder -------------------------------------------------------------------
def test_second_writer_is_refused_naming_the_holder(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    slow = {**os.environ, "FAKE_DELAY_S": "0.05"}  # 12 docs x 4 requests x 50 ms
    first = subprocess.Popen([sys.executable, str(TESTS / "fake_cli.py"), *run_args(out, data_dir, "--shots", "4")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=slow)
    lock = out / ".lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (lock.exists() and f"pid {first.pid}" in lock.read_text()):
        time.sleep(0.05)
    second = dseval(*run_args(out, data_dir, "--shots", "5"))
    one_line_error(second, str(out), f"pid {first.pid}", "--shots 4", "choose another --out")
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    records = samples(out)
    assert len(records) == 12 and all(r["prompt"].count("Answer:") == 5 for r in records), "only 4-shot prompts"
    assert not list(out.rglob("*.tmp")), "no temporary file left behind"
    # the lock dies with its holder: a resume after the first finished is allowed
    assert dseval(*run_args(out, data_dir, "--shots", "4")).returncode == 0


def test_lock_is_released_by_a_killed_run(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    slow = {**os.environ, "FAKE_DELAY_S": "0.05"}
    proc = subprocess.Popen([sys.executable, str(TESTS / "fake_cli.py"), *run_args(out, data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=slow)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "mmlu" / "samples.jsonl").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert dseval(*run_args(out, data_dir)).returncode == 0
    assert len(samples(out)) == 12


# ---- 2. the model's fingerprint is part of the identity -----------------------------------------
class FingerprintedFake(FakeBackend):
    def __init__(self, fingerprint: dict[str, str]) -> None:
        super().__init__()
        self.fingerprint = fingerprint


def test_changed_weights_under_the_same_path_refuse_to_resume(tmp_path: Path, data_dir: Path) -> None:
    config = RunConfig(tasks=("mmlu",), model="fake:hash", out=tmp_path / "run", ids=tuple(IDS.split(",")),
                       data_dir=str(data_dir))
    old = {"config.json": "c1", "model-00001-of-00002.safetensors": "s1", "model-00002-of-00002.safetensors": "s2"}
    evaluate(config, FingerprintedFake(old))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model_fingerprint"] == old
    evaluate(config, FingerprintedFake(dict(old)))  # same weights: resumes
    new = {**old, "model-00002-of-00002.safetensors": "s2'"}
    with pytest.raises(UserError, match="model-00002-of-00002.safetensors differs"):
        evaluate(config, FingerprintedFake(new))


# ---- 3. non-finite answers stop the run --------------------------------------------------------
def test_nan_loglikelihood_stops_naming_the_doc(tmp_path: Path, data_dir: Path) -> None:
    poisoned = "mmlu/test/700"

    class NanAt(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.seen = 0

        def loglikelihood(self, requests, on_result=None):
            def report(index, result):
                self.seen += 1
                if self.seen > 20:  # doc 6 of 12 (4 requests each): mmlu/test/500 is the last one kept
                    result = type(result)(math.nan, False)
                on_result(index, result)
            return super().loglikelihood(requests, report)

    config = RunConfig(tasks=("mmlu",), model="fake:hash", out=tmp_path / "run", ids=tuple(IDS.split(",")),
                       data_dir=str(data_dir))
    with pytest.raises(UserError, match="mmlu/test/500.*non-finite") as err:
        evaluate(config, NanAt())
    assert poisoned not in str(err.value)
    kept = samples(tmp_path / "run")
    assert [r["id"] for r in kept] == [f"mmlu/test/{i}" for i in range(0, 500, 100)], "finished docs are kept"
    assert "NaN" not in (tmp_path / "run" / "mmlu" / "samples.jsonl").read_text()
    assert not (tmp_path / "run" / "summary.json").exists()


def test_nonfinite_logits_while_generating_stop_naming_the_doc(tmp_path: Path, data_dir: Path) -> None:
    """The engine ends a generation over NaN logits with finish reason "nonfinite"
    (test_engine_runtime); the run stops there, naming the doc, and keeps what it finished."""

    class NanGeneration(FakeBackend):
        def generate(self, requests, on_result=None):
            def report(index, result):
                if requests[index].prompt == poisoned[0]:
                    result = type(result)(result.text, result.num_tokens, "nonfinite", result.prompt_tokens)
                on_result(index, result)
            return super().generate(requests, report)

    config = RunConfig(tasks=("humaneval",), model="fake:hash", out=tmp_path / "run", limit=3, data_dir=str(data_dir))
    docs = get_task("humaneval").load(DataSource(str(data_dir)))[:3]
    poisoned = [next(iter(get_task("humaneval").build(docs[2], _base_context())[1])).prompt]
    with pytest.raises(UserError, match=f"{docs[2].id}.*NaN or infinite") as err:
        evaluate(config, NanGeneration())
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "summary.json").exists()


def _base_context() -> PromptContext:
    return PromptContext(shots=0, chat=False, seed=0, samples=1, render_chat=lambda m: "")


# ---- 5. honest partial results --------------------------------------------------------------------
def test_score_on_an_unfinished_run_says_so(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    assert dseval(*run_args(out, data_dir)).returncode == 0
    full = json.loads((out / "summary.json").read_text())["tasks"]["mmlu"]
    assert (full["complete"], full["n_done"], full["n_total"], full["limit"]) == (True, 12, 12, None)
    lines = (out / "mmlu" / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "mmlu" / "samples.jsonl").write_text("".join(lines[:5]))
    one_line_error(dseval("score", str(out)), "unfinished", "mmlu 5/12", "--partial")
    proc = dseval("score", str(out), "--partial")
    assert proc.returncode == 0, proc.stderr
    part = json.loads((out / "summary.json").read_text())["tasks"]["mmlu"]
    assert (part["complete"], part["n_done"], part["n_total"], part["n"]) == (False, 5, 12, 5)
    assert "partial 5/12" in " ".join(proc.stdout.split())


def test_a_limited_run_is_marked(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    proc = dseval("run", "mmlu", "--model", "fake:hash", "--out", str(out), "--data-dir", str(data_dir), "--limit", "1")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())["tasks"]["mmlu"]
    assert summary["limit"] == 1 and summary["complete"] and summary["n_total"] == 57
    assert "--limit 1" in " ".join(proc.stdout.split())


def test_running_one_task_keeps_the_others_summaries(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    common = ["--model", "fake:hash", "--out", str(out), "--data-dir", str(data_dir), "--limit", "2"]
    assert dseval("run", "mmlu", "drop", *common).returncode == 0
    both = json.loads((out / "summary.json").read_text())["tasks"]
    (out / "drop" / "samples.jsonl").unlink()
    assert dseval("run", "drop", *common).returncode == 0
    after = json.loads((out / "summary.json").read_text())["tasks"]
    assert set(after) == {"mmlu", "drop"} and after == both
    (out / "summary.json").write_text('{"tasks": ')  # a torn summary is derived data: replaced, not fatal
    assert dseval("run", "drop", *common).returncode == 0
    assert set(json.loads((out / "summary.json").read_text())["tasks"]) == {"drop"}


# ---- 7. bad input is one line, exit 2, nothing lost -------------------------------------------------
@pytest.mark.parametrize("content,needle", [("[]", '"tasks"'), ('{"model": "fake:hash"}', '"tasks"'),
                                            ('{"tasks": {"mmlu": 3}}', "tasks.mmlu")])
def test_malformed_run_json(tmp_path: Path, data_dir: Path, content: str, needle: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(content)
    one_line_error(dseval(*run_args(out, data_dir)), str(out / "run.json"), needle)
    one_line_error(dseval("score", str(out)), str(out / "run.json"), needle)


def test_foreign_sample_id_names_file_and_line(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    assert dseval(*run_args(out, data_dir)).returncode == 0
    path = out / "mmlu" / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    foreign = json.loads(lines[3]) | {"id": "mmlu/test/99999"}
    path.write_text("".join(lines[:3]) + json.dumps(foreign) + "\n" + "".join(lines[4:]))
    before = path.read_bytes()
    one_line_error(dseval(*run_args(out, data_dir)), f"{path}:4", "mmlu/test/99999", "remove that line")
    assert path.read_bytes() == before


def test_full_disk_names_the_file_and_keeps_samples(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"

    def small_files() -> None:  # in the child: writes past 20 kB fail as on a full disk (EFBIG, not ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    slow = {**os.environ, "FAKE_DELAY_S": "0.1"}  # flushes every 2 s: several writes before the limit
    proc = subprocess.run([sys.executable, str(TESTS / "fake_cli.py"), *run_args(out, data_dir)], capture_output=True,
                          text=True, timeout=300, env=slow, preexec_fn=small_files)
    one_line_error(proc, "cannot write", str(out / "mmlu" / "samples.jsonl"), "File too large", "resume")
    assert dseval(*run_args(out, data_dir)).returncode == 0, "the resume repairs a torn line and finishes"
    assert sorted(r["id"] for r in samples(out)) == sorted(IDS.split(","))


def test_cuda_device_without_gpu(tmp_path: Path, data_dir: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = dseval("run", "mmlu", "--model", "tiny", "--device", "cuda", "--out", str(tmp_path), "--data-dir", str(data_dir))
    one_line_error(proc, "--device cuda", "no CUDA GPU", "--device cpu")


def test_hub_unreachable_fails_fast(tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # port 9: refused
    start = time.monotonic()
    proc = dseval("run", "mmlu", "--model", "fake:hash", "--out", str(tmp_path / "run"), "--data-dir", "hub", env=env)
    one_line_error(proc, "--data-dir hub", "cais/mmlu", "unreachable", "--data-dir DIR")
    assert time.monotonic() - start < 20


@pytest.mark.parametrize("option,value,needle", [("--depths", "0,150", "depth 150"), ("--lengths", "16", "length 16")])
def test_niah_grid_is_checked(tmp_path: Path, option: str, value: str, needle: str) -> None:
    one_line_error(dseval("niah", "--model", "fake:hash", "--out", str(tmp_path), option, value), option, needle)


def test_changed_selection_says_what_changed(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    assert dseval(*run_args(out, data_dir)).returncode == 0
    proc = dseval("run", "mmlu", "--model", "fake:hash", "--out", str(out), "--data-dir", str(data_dir), "--ids", IDS + ",mmlu/test/5")
    one_line_error(proc, "ids=")  # --ids is an identity field: named as such
    store = RunStore(out)
    run = store.read_run()
    run["tasks"]["mmlu"]["n_docs"] = 11
    run["tasks"]["mmlu"]["data_fingerprint"] = "other"
    store.write_run(run)
    one_line_error(dseval(*run_args(out, data_dir)), "selected 11 docs", "selects 12", "--limit, --ids")


# ---- 8. what run.json and the samples record --------------------------------------------------------
def test_run_json_records_invocations_and_samples_record_finish(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "humaneval", "--model", "fake:hash", "--out", str(out), "--limit", "2"]
    assert dseval(*args).returncode == 0
    assert dseval(*args).returncode == 0  # a resume adds an invocation
    run = json.loads((out / "run.json").read_text())
    assert [i["argv"][1:] for i in run["invocations"]] == [args, args]
    first = run["invocations"][0]
    assert first["started"] <= first["finished"] and first["hardware"]["cpus"] == os.cpu_count()
    assert first["data_dir"] == "none" and first["backend_stats"] == {}  # the fake backend counts nothing
    generation = run["tasks"]["humaneval"]["generation"]
    assert len(generation) == 1 and generation[0]["temperature"] == 0.0 and "\nclass" in generation[0]["stop"]
    record = samples(out, "humaneval")[0]
    assert record["finish_reasons"] == ["stop"] and record["output_tokens"] == [0]


def test_version_and_option_types_in_words() -> None:
    proc = subprocess.run([sys.executable, "-m", "dseval", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("dseval ")
    for command in (["run"], ["score"], ["leaderboard"], ["compare"], ["baseline", "update"]):
        help_text = subprocess.run([sys.executable, "-m", "dseval", *command, "--help"], capture_output=True, text=True,
                                   timeout=60, env={**os.environ, "COLUMNS": "200"}).stdout
        assert "PATH" in help_text or "TEXT" in help_text, command
        assert re.search(r"<(str|int|float|bool|path|list\[[^]]*\])>", help_text) is None, (command, help_text)
    assert "tasks...      TEXT..." in subprocess.run([sys.executable, "-m", "dseval", "run", "--help"], capture_output=True,
                                                     text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}).stdout


def test_leaderboard_and_report_survive_a_task_without_samples(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    assert dseval(*run_args(out, data_dir)).returncode == 0
    (out / "mmlu" / "samples.jsonl").write_text("")
    proc = dseval("score", str(out), "--partial")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())["tasks"]["mmlu"]
    assert summary["n_done"] == 0 and summary["metrics"].get("acc") is None, "undefined, never NaN in JSON"
    board = dseval("leaderboard", str(out))
    assert board.returncode == 0 and "Traceback" not in board.stderr, board.stderr


def test_changed_checkpoint_is_refused_before_loading(tmp_path: Path, data_dir: Path) -> None:
    """The real CLI on a checkpoint folder: rewritten weights under the same path refuse to resume."""
    torch = pytest.importorskip("torch")
    from engine_fixtures import write_random_checkpoint
    from dseval.engine.loading.presets import tiny_config

    ckpt = write_random_checkpoint(tmp_path / "ckpt", tiny_config(), seed=0, dtype=torch.float32, num_shards=2)
    out = tmp_path / "run"
    args = ["run", "mmlu", "--model", str(ckpt), "--out", str(out), "--data-dir", str(data_dir), "--ids", "mmlu/test/0",
            "--device", "cpu"]
    assert dseval(*args).returncode == 0
    write_random_checkpoint(ckpt, tiny_config(), seed=1, dtype=torch.float32, num_shards=2)
    one_line_error(dseval(*args), str(out / "run.json"), "model checkpoint changed", ".safetensors differs")


def test_adding_a_niah_length_extends_the_run(tmp_path: Path) -> None:
    from dseval.tasks.niah import NeedleInAHaystack

    config = RunConfig(tasks=("niah",), model="fake:hash", out=tmp_path / "run", data_dir=str(tmp_path))
    evaluate(config, FakeBackend(), tasks=[NeedleInAHaystack((1024,), (0, 50))])
    first = {s["id"]: s for s in samples(tmp_path / "run", "niah")}
    evaluate(config, FakeBackend(), tasks=[NeedleInAHaystack((1024, 2048), (0, 50))])
    grown = samples(tmp_path / "run", "niah")
    assert len(grown) == 4 and all(s["output"] == first[s["id"]]["output"] for s in grown if s["id"] in first)
    with pytest.raises(UserError, match=r"holds doc niah/2048/0/0, which this run lacks: .*can grow .* not shrink"):
        evaluate(config, FakeBackend(), tasks=[NeedleInAHaystack((1024,), (0, 50))])
    assert len(samples(tmp_path / "run", "niah")) == 4, "the finished run is untouched"
