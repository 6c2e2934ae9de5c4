"""The OpenAI-compatible backend against a real HTTP server on loopback.

The server speaks the completions protocol with a character-level "tokenizer": every
character is a token whose log-probability is -(its code point % 7) / 10, so expected sums
can be computed independently here.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dseval.backends.base import BackendOptions
from dseval.backends.registry import load_backend
from dseval.config import RunConfig
from dseval.errors import UserError
from dseval.requests import GenerateRequest, LoglikelihoodRequest, LoglikelihoodRollingRequest
from dseval.runner import evaluate


def char_logprob(ch: str) -> float:
    return -(ord(ch) % 7) / 10


class CompletionsHandler(BaseHTTPRequestHandler):
    failures_left = 0
    seen: list[dict] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        if body.get("model") != "m":
            self._send(400, {"error": "unknown model"})
            return
        prompt = body["prompt"]
        if body.get("echo"):
            tokens = list(prompt) + ["!"]
            logprobs = {
                "tokens": tokens,
                "text_offset": list(range(len(tokens))),
                "token_logprobs": [char_logprob(c) for c in tokens],
                "top_logprobs": [{c: char_logprob(c)} if c != "B" else {"A": -0.01} for c in tokens],
            }
            self._send(200, {"choices": [{"text": prompt + "!", "logprobs": logprobs, "finish_reason": "length"}]})
        else:
            text = f"echo[{prompt[-5:]}] STOP tail"
            self._send(200, {"choices": [{"text": text, "finish_reason": "stop"}]})

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server():
    CompletionsHandler.failures_left = 0
    CompletionsHandler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), CompletionsHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def backend(url: str, model: str = "m"):
    return load_backend(f"openai:{url}#{model}", BackendOptions(batch_size=4))


def test_loglikelihood_sums_continuation_tokens(server: str) -> None:
    results = backend(server).loglikelihood([LoglikelihoodRequest("Answer:", " A"), LoglikelihoodRequest("Q ", "B")])
    assert results[0].logprob == pytest.approx(char_logprob(" ") + char_logprob("A"))
    assert results[0].is_greedy
    # trailing space of the context moves to the continuation; "B" is not the top token
    assert results[1].logprob == pytest.approx(char_logprob(" ") + char_logprob("B"))
    assert not results[1].is_greedy


def test_rolling_loglikelihood_sums_the_whole_text(server: str) -> None:
    """Every character of the text is a scored token; the one generated after it is not."""
    (result,) = backend(server).loglikelihood_rolling([LoglikelihoodRollingRequest("Hello, world")])
    assert result.num_tokens == 12 and result.logprob == pytest.approx(sum(map(char_logprob, "Hello, world")))
    assert CompletionsHandler.seen[-1]["echo"] is True


def test_generate_cuts_stop_and_reports_in_order(server: str) -> None:
    requests = [GenerateRequest(prompt=f"prompt {i}", stop=("STOP",), max_tokens=8) for i in range(10)]
    seen: list[int] = []
    results = backend(server).generate(requests, lambda i, r: seen.append(i))
    assert [r.text for r in results] == [f"echo[mpt {i}] " for i in range(10)]
    assert sorted(seen) == list(range(10))
    assert CompletionsHandler.seen[0]["stop"] == ["STOP"] and CompletionsHandler.seen[0]["max_tokens"] == 8


def test_retries_transient_errors(server: str) -> None:
    CompletionsHandler.failures_left = 2
    assert backend(server).generate([GenerateRequest(prompt="abc")])[0].text.startswith("echo[abc]")


def test_client_error_is_a_user_error(server: str) -> None:
    with pytest.raises(UserError, match="HTTP 400"):
        backend(server, model="other").generate([GenerateRequest(prompt="abc")])


def test_bad_spec() -> None:
    with pytest.raises(UserError, match="URL#MODEL"):
        load_backend("openai:localhost:8000", BackendOptions())


def test_mmlu_end_to_end(server: str, tmp_path: Path, data_dir: Path) -> None:
    config = RunConfig(tasks=("mmlu",), model=f"openai:{server}#m", out=tmp_path / "run", limit=1, data_dir=str(data_dir))
    summary = evaluate(config)["tasks"]["mmlu"]
    assert summary["n"] == 57
    # The server's per-character log-probabilities decide the winning letter for every question.
    best = max("ABCD", key=lambda letter: char_logprob(letter))
    lines = (tmp_path / "run" / "mmlu" / "samples.jsonl").read_text().splitlines()
    assert all(json.loads(line)["loglikelihoods"].index(max(json.loads(line)["loglikelihoods"])) == "ABCD".index(best) for line in lines)


def test_chat_loglikelihood_task_is_refused_in_one_line(server: str, tmp_path: Path, data_dir: Path) -> None:
    """A server applies its template to chat requests only: `mmlu --chat` (a templated context
    to score) cannot run through it, and says so before any request."""
    config = RunConfig(tasks=("mmlu",), model=f"openai:{server}#m", out=tmp_path / "run", limit=1, chat=True,
                       data_dir=str(data_dir))
    with pytest.raises(UserError, match="loglikelihood tasks .* cannot run with --chat"):
        evaluate(config)
