"""Whole runs through `dseval serve --model tiny` on loopback: base and ``--chat`` runs through
``openai:`` and ``openai-chat:`` give the in-process engine's samples; a server killed mid-run
and started again lets the run finish with every sample once; the API key never reaches the
run folder, the run's output or the server's; a model split over two torchrun ranks
(``--tp 2``) serves the single process's answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_serve import KEY, free_port, server, start_server  # noqa: F401 - the module-scoped server fixture

from dseval.backends.base import BackendOptions
from dseval.backends.registry import load_backend
from dseval.config import RunConfig
from dseval.requests import ChatRequest, GenerateRequest, LoglikelihoodRequest
from dseval.runner import evaluate
from dseval.store import RunStore

pytestmark = pytest.mark.slow
MMLU_IDS = ("mmlu/test/0", "mmlu/test/700")
CPU = BackendOptions(device="cpu", batch_size=8)
#: Docs of the killed run: enough that it is still running at its first flush of samples.
DOCS = 100


def run(out: Path, model: str, tasks: tuple[str, ...], data_dir: Path, chat: bool, **extra) -> dict[str, dict]:
    """Samples by task and id of a run of ``tasks`` (2 docs each, 8 new tokens)."""
    evaluate(RunConfig(tasks=tasks, model=model, out=out, limit=2, chat=chat, max_tokens=8, data_dir=str(data_dir),
                       options=CPU, **extra))
    store = RunStore(out)
    return {task: {s.id: s for s in store.load_samples(task)} for task in tasks}


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, dict[str, dict]]:
    root = tmp_path_factory.mktemp("engine")
    return {"base": run(root / "base", "tiny", ("gsm8k",), data_dir, False),
            "chat": run(root / "chat", "tiny", ("math500", "gsm8k", "mbpp"), data_dir, True)}


def test_base_run_through_openai_equals_the_engine(server: str, engine_runs, tmp_path: Path, data_dir: Path,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    remote = run(tmp_path / "remote", f"openai:{server}/v1#tiny", ("gsm8k",), data_dir, False)
    want = engine_runs["base"]["gsm8k"]
    assert {i: s.outputs for i, s in remote["gsm8k"].items()} == {i: s.outputs for i, s in want.items()}
    assert {i: s.prompt for i, s in remote["gsm8k"].items()} == {i: s.prompt for i, s in want.items()}
    assert {i: s.prompt_tokens for i, s in remote["gsm8k"].items()} == {i: s.prompt_tokens for i, s in want.items()}
    mmlu = dict(tasks=("mmlu",), model=f"openai:{server}/v1#tiny", ids=MMLU_IDS, data_dir=str(data_dir), options=CPU)
    evaluate(RunConfig(out=tmp_path / "mmlu-remote", **mmlu))
    evaluate(RunConfig(out=tmp_path / "mmlu-engine", **{**mmlu, "model": "tiny"}))
    got = {s.id: s.loglikelihoods for s in RunStore(tmp_path / "mmlu-remote").load_samples("mmlu")}
    local = {s.id: s.loglikelihoods for s in RunStore(tmp_path / "mmlu-engine").load_samples("mmlu")}
    assert got.keys() == local.keys() == set(MMLU_IDS)
    for doc_id in MMLU_IDS:
        assert got[doc_id] == pytest.approx(local[doc_id], abs=2e-3)


@pytest.mark.parametrize("spec", ["openai", "openai-chat"])
def test_chat_run_through_the_server_equals_the_engine(spec: str, server: str, engine_runs, tmp_path: Path,  # noqa: F811
                                                       data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tasks send messages; the server applies the checkpoint's chat template, so the
    answers are the engine's, and the samples record the conversation the server was sent."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    tasks = ("math500", "gsm8k", "mbpp")
    remote = run(tmp_path / spec, f"{spec}:{server}/v1#tiny", tasks, data_dir, True)
    for task in tasks:
        want = engine_runs["chat"][task]
        assert {i: s.outputs for i, s in remote[task].items()} == {i: s.outputs for i, s in want.items()}, task
        assert {i: s.prompt_tokens for i, s in remote[task].items()} == {i: s.prompt_tokens for i, s in want.items()}, task
        for doc_id, sample in remote[task].items():
            messages = json.loads(sample.prompt)
            assert messages[-1]["role"] == "user" and want[doc_id].prompt.startswith("<｜begin▁of▁sentence｜>")
    mbpp_turns = [m["role"] for m in json.loads(next(iter(remote["mbpp"].values())).prompt)]
    assert mbpp_turns == ["user", "assistant"] * 3 + ["user"], "few-shot examples as alternating turns"


def cli(out: Path, url: str, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "dseval", "run", "gsm8k", "--model", f"openai:{url}/v1#tiny", "--out", str(out),
            "--data-dir", str(data_dir), "--limit", str(DOCS), "--max-tokens", "64", "--concurrency", "2",
            "--max-retries", "0"]


def test_server_killed_mid_run_and_restarted_lets_the_run_finish(tmp_path: Path, data_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "run"
    samples = out / "gsm8k" / "samples.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    server_proc = start_server(port)
    try:
        first = subprocess.Popen(cli(out, url, data_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (samples.exists() and samples.read_text()) and first.poll() is None:
            time.sleep(0.05)
        server_proc.kill()
        server_proc.wait(timeout=30)
        first_output = first.communicate(timeout=120)[0].decode()
        assert first.returncode != 0, "the server was killed before the run could finish"
        kept = samples.read_text().splitlines()
        assert 0 < len(kept) < DOCS
        server_proc = start_server(port)
        resumed = subprocess.run(cli(out, url, data_dir), capture_output=True, text=True, timeout=300, env=env)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    finally:
        server_proc.kill()
        server_output = server_proc.communicate(timeout=30)[0].decode()
    ids = [json.loads(line)["id"] for line in samples.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == DOCS, "every sample once"
    assert set(kept) <= set(samples.read_text().splitlines()), "finished samples kept as they were"
    assert KEY not in first_output + resumed.stdout + resumed.stderr + server_output
    for path in out.rglob("*"):
        assert not path.is_file() or KEY not in path.read_text(errors="replace"), f"API key written to {path}"


def test_split_model_serves_the_single_process_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torchrun --nproc-per-node 2 -m dseval serve --model tiny --tp 2``: rank 0 serves, rank 1
    follows its calls; greedy text and chat answers equal one process's, loglikelihoods to float
    rounding, and stopping rank 0 stops both."""
    port = free_port()
    proc = start_server(port, "--tp", "2", nproc=2)
    try:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        remote = load_backend(f"openai:http://127.0.0.1:{port}/v1#tiny", BackendOptions(batch_size=4))
        local = load_backend("tiny", BackendOptions(device="cpu"))
        generate = [GenerateRequest(prompt=p, max_tokens=8) for p in ("def add(a, b):", "Once upon a time", "1, 2, 3,")]
        chat = [ChatRequest(messages=({"role": "user", "content": q},), max_tokens=8) for q in ("2 + 2?", "Hi")]
        scored = [LoglikelihoodRequest("The capital of France is", c) for c in (" Paris", " Rome")]
        assert [r.text for r in remote.generate(generate)] == [r.text for r in local.generate(generate)]
        assert [r.text for r in remote.chat(chat)] == [r.text for r in local.chat(chat)]
        got, want = remote.loglikelihood(scored), local.loglikelihood(scored)
        assert [r.logprob for r in got] == pytest.approx([r.logprob for r in want], abs=2e-3)
        local.close()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode is not None and KEY not in output
