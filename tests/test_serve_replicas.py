"""``torchrun ... -m dseval serve --dp 2`` on loopback: each batch is shared by the replicas
(``/health`` shows both took requests), concurrent callers get the single process's greedy
answers and loglikelihoods (also with ``--tp 2`` inside each replica), a backend failure on one
replica fails only the callers in its share while the server keeps serving, and stopping rank 0
stops every rank."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fake_model import FAIL_PROMPT, SLOW_PROMPT, FakeBackend
from test_serve import KEY, free_port, post, start_server

from dseval.backends.base import BackendOptions, ModelBackend
from dseval.backends.registry import load_backend
from dseval.distributed import consecutive_shares
from dseval.requests import ChatRequest, GenerateRequest, LoglikelihoodRequest

FAKE_CLI = (str(Path(__file__).parent / "fake_cli.py"),)


@pytest.fixture(scope="module")
def local() -> Iterator[ModelBackend]:
    backend = load_backend("tiny", BackendOptions(device="cpu"))
    yield backend
    backend.close()


def health(url: str) -> list[dict[str, Any]]:
    """``/health``'s replicas: ranks, requests and failed of each."""
    with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
        return json.loads(response.read())["replicas"]


def complete(url: str, prompt: str, max_tokens: int = 6) -> tuple[int, dict[str, Any]]:
    return post(f"{url}/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})


def text(reply: tuple[int, dict[str, Any]]) -> str:
    status, body = reply
    assert status == 200, body
    return body["choices"][0]["text"]


def ask_together(url: str, prompts: list[str]) -> list[tuple[int, dict[str, Any]]]:
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda p: complete(url, p), prompts))


def test_a_batch_is_cut_into_consecutive_runs_the_first_ones_longer() -> None:
    assert consecutive_shares(8, 2) == [range(0, 4), range(4, 8)]
    assert consecutive_shares(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert consecutive_shares(1, 2) == [range(0, 1), range(1, 1)]  # a lone request: replica 0, no call elsewhere


@pytest.mark.slow
@pytest.mark.parametrize(("nproc", "layout", "ranks"), [(2, ("--dp", "2"), [[0], [1]]),
                                                        (4, ("--dp", "2", "--tp", "2"), [[0, 1], [2, 3]])],
                         ids=["dp2", "dp2-tp2"])
def test_replicas_share_the_batches_and_answer_as_one_process(nproc: int, layout: tuple[str, ...], ranks,
                                                              local: ModelBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, *layout, nproc=nproc)
    try:
        prompts = [f"Item {i}:" for i in range(32)]
        want = [r.text for r in local.generate([GenerateRequest(prompt=p, max_tokens=6) for p in prompts])]
        assert [text(reply) for reply in ask_together(url, prompts)] == want
        replicas = health(url)
        assert [r["ranks"] for r in replicas] == ranks
        assert sum(r["requests"] for r in replicas) == len(prompts)
        assert all(r["requests"] > 0 for r in replicas), replicas
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        remote = load_backend(f"openai:{url}/v1#tiny", BackendOptions(batch_size=8))
        scored = [LoglikelihoodRequest("Question: 2 + 2 =\nAnswer:", f" {c}") for c in "ABCD"]
        scored.append(LoglikelihoodRequest("The capital of France is", " Paris, a city"))
        got, expected = remote.loglikelihood(scored), local.loglikelihood(scored)
        assert [r.logprob for r in got] == pytest.approx([r.logprob for r in expected], abs=2e-3)
        assert [r.is_greedy for r in got] == [r.is_greedy for r in expected]
        chat = [ChatRequest(messages=({"role": "user", "content": q},), max_tokens=8) for q in ("2 + 2?", "Hi", "Why?")]
        assert [r.text for r in remote.chat(chat)] == [r.text for r in local.chat(chat)]
        assert all(r["failed"] == 0 for r in health(url))
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0].decode()
    assert KEY not in output


def rank_pid(launcher: int, rank: int) -> int:
    """The process id of torchrun's worker of ``rank``."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return int(child)
    raise LookupError(f"no worker of rank {rank} under process {launcher}")


@pytest.mark.slow
def test_a_failing_replica_fails_only_its_share_and_rank_0_stops_the_rest() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, "--dp", "2", nproc=2, model="fake:hash", program=FAKE_CLI)
    try:
        fake = FakeBackend()
        prompts = [f"question {i}" for i in range(7)] + [FAIL_PROMPT]
        with ThreadPoolExecutor(len(prompts) + 1) as pool:
            slow = pool.submit(complete, url, SLOW_PROMPT)
            while sum(r["requests"] for r in health(url)) == 0:  # the slow call has started ...
                time.sleep(0.05)
            asked = []
            for prompt in prompts:  # ... so these queue behind it and form the next batch, cut 4 + 4
                asked.append(pool.submit(complete, url, prompt))
                time.sleep(0.1)
            replies = [future.result() for future in asked]
            assert text(slow.result()) == fake.generate([GenerateRequest(prompt=SLOW_PROMPT)])[0].text
        failed = {p: body["error"]["message"] for p, (status, body) in zip(prompts, replies) if status != 200}
        assert FAIL_PROMPT in failed and len(failed) == 4, failed
        replicas = health(url)
        assert sorted(r["failed"] for r in replicas) == [0, 4], replicas
        remote_failure = replicas[1]["failed"] == 4  # rank 1 sends its failure to rank 0 by name
        for prompt, (status, body) in zip(prompts, replies):
            if prompt in failed:
                assert status == 500 and "RuntimeError: fake failure" in failed[prompt], body
                assert ("replica 1 failed" in failed[prompt]) == remote_failure, failed[prompt]
            else:
                assert text((status, body)) == fake.generate([GenerateRequest(prompt=prompt)])[0].text
        again = [f"again {i}" for i in range(8)]  # the server keeps serving
        assert [text(reply) for reply in ask_together(url, again)] == [
            r.text for r in fake.generate([GenerateRequest(prompt=p) for p in again])]
        assert sum(r["requests"] for r in health(url)) == 1 + len(prompts) + len(again)
        os.kill(rank_pid(proc.pid, 0), signal.SIGTERM)
        proc.wait(timeout=60)  # rank 0 stops serving and tells rank 1 to stop: the whole server ends
    finally:
        proc.kill()
        proc.communicate(timeout=60)
