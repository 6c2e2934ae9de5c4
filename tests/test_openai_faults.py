"""The OpenAI-compatible backend against a loopback server that misbehaves: bodies that are not
completions, a server that dies, hangs or refuses, Ctrl-C mid-run. Each ends in one line (or a
clean stop) within seconds, keeps finished samples, and a resume gives every sample once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dseval.backends.base import BackendOptions
from dseval.backends.registry import load_backend
from dseval.errors import UserError
from dseval.requests import GenerateRequest, LoglikelihoodRequest

TESTS = Path(__file__).parent
IDS = ",".join(f"mmlu/test/{i}" for i in range(0, 1200, 100))  # 12 docs, 48 requests
KEY = "sk-test-secret-0123456789"


class Server:
    """A completions server whose ``behave(n, body)`` decides each answer: a (status, bytes)
    pair, or None to answer well. It logs when each request arrived."""

    def __init__(self) -> None:
        self.behave = lambda n, body: None
        self.delay_s = 0.0
        self.arrivals: list[float] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.arrivals.append(time.monotonic())
                    n = len(server.arrivals)
                time.sleep(server.delay_s)
                answer = server.behave(n, dict(body, auth=self.headers.get("Authorization")))
                status, data = answer or (200, json.dumps(good_answer(body)).encode())
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up on this request

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def good_answer(body: dict) -> dict:
    prompt = body["prompt"]
    if body.get("echo"):
        tokens = list(prompt) + ["!"]
        logprobs = {"tokens": tokens, "text_offset": list(range(len(tokens))),
                    "token_logprobs": [None] + [-(ord(c) % 7) / 10 for c in tokens[1:]],
                    "top_logprobs": [None] + [{c: 0.0} for c in tokens[1:]]}
        return {"choices": [{"text": prompt + "!", "logprobs": logprobs, "finish_reason": "length"}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1}}
    return {"choices": [{"text": "ok", "finish_reason": "stop"}], "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1}}


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.stop()


def backend(url: str, **options):
    return load_backend(f"openai:{url}#m", BackendOptions(**{"batch_size": 4, **options}))


def test_malformed_bodies_are_retried(server: Server) -> None:
    bad = [(200, b"<html>502 Bad Gateway</html>"), (200, b'{"object": "error"}'), (200, b'{"choices": []}')]
    server.behave = lambda n, body: bad[n - 1] if n <= len(bad) else None
    result = backend(server.url, concurrency=1).loglikelihood([LoglikelihoodRequest("Answer:", " A")])[0]
    assert result.logprob == pytest.approx(-(ord(" ") % 7) / 10 - (ord("A") % 7) / 10)
    assert result.prompt_tokens == len("Answer: A") and len(server.arrivals) == 4


def test_malformed_bodies_reported_in_one_line_after_retries(server: Server) -> None:
    server.behave = lambda n, body: (200, b'{"id": "x", "object": "text_completion"}')
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        backend(server.url, max_retries=2).generate([GenerateRequest(prompt="p")])
    message = str(err.value)
    assert "\n" not in message and "no valid answer after 3 tries" in message and "'choices'" in message
    assert len(server.arrivals) == 3 and time.monotonic() - start < 5


def test_fatal_error_stops_queued_requests(server: Server) -> None:
    server.delay_s = 0.05
    failed_at: list[float] = []

    def refuse_tenth(n: int, body: dict):
        if n == 10:
            failed_at.append(time.monotonic())
            return 400, b'{"error": "context too long"}'
        return None

    server.behave = refuse_tenth
    reported: list[int] = []
    with pytest.raises(UserError, match="HTTP 400.*context too long"):
        backend(server.url, concurrency=4).generate([GenerateRequest(prompt=str(i)) for i in range(200)],
                                                    lambda i, r: reported.append(i))
    time.sleep(0.5)
    late = [t for t in server.arrivals if t > failed_at[0] + 0.01]
    assert len(late) <= 3, "after the failure only workers already holding a request send it; the queue stays unsent"
    assert len(server.arrivals) < 20
    assert 5 <= len(reported) < len(server.arrivals), "answers that came back are reported, the failed one is not"


def test_dead_server_surfaces_quickly_and_sends_nothing_more(server: Server) -> None:
    server.behave = lambda n, body: None
    backend_ = backend(server.url, concurrency=4, max_retries=2)
    assert backend_.generate([GenerateRequest(prompt="warm")])[0].text == "ok"
    server.stop()
    start = time.monotonic()
    with pytest.raises(UserError, match="no valid answer after 3 tries"):
        backend_.generate([GenerateRequest(prompt=str(i)) for i in range(100)])
    assert time.monotonic() - start < 5  # backoff 0.5 + 1 s, not 100 requests x retries


def test_timeout_applies_per_request(server: Server) -> None:
    server.delay_s = 3.0
    start = time.monotonic()
    with pytest.raises(UserError, match="timed out"):
        backend(server.url, timeout=0.3, max_retries=1).generate([GenerateRequest(prompt="p")])
    assert time.monotonic() - start < 2.5


def test_api_key_never_in_errors(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.behave = lambda n, body: (401, json.dumps({"error": f"bad key in header {body['auth']}"}).encode())
    with pytest.raises(UserError) as err:
        backend(server.url).generate([GenerateRequest(prompt="p")])
    assert "HTTP 401" in str(err.value) and KEY not in str(err.value) and "***" in str(err.value)


def cli(out: Path, url: str, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dseval", "run", "mmlu", "--model", f"openai:{url}#m", "--out", str(out),
            "--data-dir", str(data_dir), "--ids", IDS, *extra]


def test_ctrl_c_stops_within_two_seconds_and_resume_gives_every_sample_once(server: Server, tmp_path: Path,
                                                                          data_dir: Path) -> None:
    out = tmp_path / "run"
    server.delay_s = 0.5  # 48 requests, 4 in flight: about 6 s in all, the first write after 2 s
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    proc = subprocess.Popen(cli(out, server.url, data_dir, "--concurrency", "4"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    samples = out / "mmlu" / "samples.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (samples.exists() and samples.read_text()):
        time.sleep(0.02)
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert time.monotonic() - interrupted < 2.0, "in-flight work stops within 2 s"
    time.sleep(0.5)
    assert not [t for t in server.arrivals if t > interrupted + 0.1], "no request went out after Ctrl-C"
    kept = samples.read_text().splitlines()
    assert 0 < len(kept) < 12 and len({json.loads(line)["id"] for line in kept}) == len(kept), "each sample once"
    server.delay_s = 0.0
    resumed = subprocess.run(cli(out, server.url, data_dir), capture_output=True, text=True, timeout=120, env=env)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(IDS.split(",")), "every sample once"
    assert {line for line in kept} <= set(samples.read_text().splitlines()), "finished samples kept as they were"
    assert all(r["prompt_tokens"] == [len(r["prompt"]) + len(c) for c in (" A", " B", " C", " D")] for r in records)
    for path in out.rglob("*"):
        assert not path.is_file() or KEY not in path.read_text(errors="replace"), f"API key written to {path}"
