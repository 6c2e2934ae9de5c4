"""`dseval serve --model tiny` on loopback: the OpenAI-compatible backend gives the in-process
engine's answers through it, concurrent clients share it, and bad requests get 4xx JSON errors
while the server keeps serving."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dseval.backends.base import BackendOptions
from dseval.backends.registry import load_backend
from dseval.requests import ChatRequest, GenerateRequest, LoglikelihoodRequest

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-not-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, *extra: str, nproc: int = 1, model: str = "tiny",
                 program: tuple[str, ...] = ("-m", "dseval")) -> subprocess.Popen:
    """``dseval serve --model tiny`` on loopback ``port`` (under torchrun with ``nproc`` > 1;
    ``program`` may be ``tests/fake_cli.py`` for ``fake:`` models), requiring :data:`KEY`;
    returns once ``/health`` answers."""
    env = {**os.environ, "DSEVAL_API_KEY": KEY}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    proc = subprocess.Popen([sys.executable, *launcher, *program, "serve", "--model", model, "--device", "cpu",
                             "--port", str(port), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"server did not start: {proc.stdout.read().decode()[-2000:]}") from None
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    proc = start_server(port, "--max-request-bytes", "100000")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post(url: str, payload: Any, key: str | None = KEY, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else json.dumps(payload).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def local():
    backend = load_backend("tiny", BackendOptions(device="cpu"))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def remote(server: str, monkeypatch_module):
    monkeypatch_module.setenv("OPENAI_API_KEY", KEY)
    return load_backend(f"openai:{server}/v1#tiny", BackendOptions(batch_size=8))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_loglikelihoods_through_the_server_equal_the_engines(local, remote) -> None:
    requests = [LoglikelihoodRequest("Question: 2 + 2 =\nAnswer:", f" {c}") for c in "ABCD"]
    requests.append(LoglikelihoodRequest("The capital of France is", " Paris, a city"))
    want = local.loglikelihood(requests)
    got = remote.loglikelihood(requests)
    assert [g.logprob for g in got] == pytest.approx([w.logprob for w in want], abs=2e-3)
    assert [g.is_greedy for g in got] == [w.is_greedy for w in want]


def test_greedy_generation_through_the_server_equals_the_engines(local, remote) -> None:
    requests = [GenerateRequest(prompt=p, max_tokens=12) for p in ("def add(a, b):", "Once upon a time", "1, 2, 3,")]
    assert [r.text for r in remote.generate(requests)] == [r.text for r in local.generate(requests)]


def test_openai_chat_backend_gets_the_engines_chat_answers(server: str, local, monkeypatch_module) -> None:
    monkeypatch_module.setenv("OPENAI_API_KEY", KEY)
    chat_backend = load_backend(f"openai-chat:{server}/v1", BackendOptions(batch_size=4))  # model from /v1/models
    requests = [ChatRequest(messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": q}),
                            max_tokens=8, doc_id=q) for q in ("2 + 2?", "Name a colour.")]
    assert [r.text for r in chat_backend.chat(requests)] == [r.text for r in local.chat(requests)]


def test_chat_endpoint_renders_the_chat_template(server: str, local) -> None:
    messages = [{"role": "user", "content": "Say hi"}]
    status, body = post(f"{server}/v1/chat/completions", {"model": "tiny", "messages": messages,
                                                          "max_tokens": 8, "temperature": 0})
    assert status == 200, body
    (want,) = local.generate([GenerateRequest(prompt=local.apply_chat_template(messages), max_tokens=8)])
    assert body["choices"][0]["message"] == {"role": "assistant", "content": want.text}


def test_64_concurrent_clients_get_their_own_answers(server: str, local) -> None:
    prompts = [f"Item {i}:" for i in range(64)]
    want = [r.text for r in local.generate([GenerateRequest(prompt=p, max_tokens=6) for p in prompts])]

    def ask(prompt: str) -> str:
        status, body = post(f"{server}/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 6,
                                                         "temperature": 0})
        assert status == 200, body
        return body["choices"][0]["text"]

    with ThreadPoolExecutor(64) as pool:
        assert list(pool.map(ask, prompts)) == want


def test_streaming_sends_server_sent_events(server: str) -> None:
    request = urllib.request.Request(
        f"{server}/v1/completions", data=json.dumps({"prompt": "Hi", "max_tokens": 4, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("payload", "raw", "key", "status"),
    [
        (None, b"{not json", KEY, 400),
        ({"prompt": "x", "model": "gpt-4"}, None, KEY, 404),
        ({"prompt": 5}, None, KEY, 400),
        ({"prompt": "x", "temperature": -1}, None, KEY, 400),
        ({"prompt": "x", "max_tokens": "many"}, None, KEY, 400),
        ({"prompt": "x" * 200_000}, None, KEY, 413),
        ({"prompt": "x"}, None, None, 401),
        ({"prompt": "x"}, None, "wrong", 401),
    ],
)
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server: str, payload, raw, key, status) -> None:
    code, body = post(f"{server}/v1/completions", payload, key=key, raw=raw)
    assert code == status and body["error"]["message"]
    assert KEY not in json.dumps(body)
    code, body = post(f"{server}/v1/completions", {"prompt": "ok", "max_tokens": 1})
    assert code == 200


@pytest.mark.parametrize(("payload", "status"), [
    ({"messages": "hi"}, 400),
    ({"messages": []}, 400),
    ({"messages": [{"role": "user"}]}, 400),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}, 404),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 2}, 400),
])
def test_bad_chat_requests_get_json_errors(server: str, payload: dict[str, Any], status: int) -> None:
    code, body = post(f"{server}/v1/chat/completions", payload)
    assert code == status and body["error"]["message"]
    code, _ = post(f"{server}/v1/chat/completions", {"messages": [{"role": "user", "content": "ok"}], "max_tokens": 1})
    assert code == 200


def test_models_lists_the_served_name(server: str) -> None:
    request = urllib.request.Request(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == ["tiny"]
