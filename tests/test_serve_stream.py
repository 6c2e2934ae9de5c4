"""`dseval serve` over the built-in engine generates continuously: streamed server-sent events
carry the text token by token and join to exactly the non-streamed answer (stop strings cut,
never leaked), a request that arrives mid-generation finishes before a long one already
running, and a client that disconnects mid-stream has its sequence dropped from the engine.
The server runs in this process on loopback (uvicorn on a thread), so the tests can look into
its engine; the incremental detokenizer is checked on a character split across tokens."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fake_model import FakeBackend
from test_serve import free_port

from dseval.backends.base import BackendOptions, ModelBackend
from dseval.backends.registry import load_backend
from dseval.engine.loading.tokenizer import REPLACEMENT
from dseval.engine.runtime.live import IncrementalDetokenizer, stop_prefix_length
from dseval.serve import Server

pytestmark = pytest.mark.slow
PROMPT = "Once upon a time"


class Live:
    """The in-process server: its address and its backend (whose engine the tests inspect)."""

    def __init__(self, backend: Any, port: int) -> None:
        self.backend, self.port = backend, port

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def post(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        conn = self.connect()
        try:
            conn.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def stream(self, path: str, payload: dict[str, Any]) -> Iterator[tuple[float, Any]]:
        """(arrival time, event) per server-sent event, the event parsed ("[DONE]" as is)."""
        conn = self.connect()
        try:
            conn.request("POST", path, json.dumps({**payload, "stream": True}), {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            while line := response.readline():
                if line.startswith(b"data: "):
                    data = line[6:].strip().decode()
                    yield time.monotonic(), data if data == "[DONE]" else json.loads(data)
        finally:
            conn.close()


@contextlib.contextmanager
def serving(backend: ModelBackend) -> Iterator[Live]:
    """``backend`` served on a loopback port by uvicorn on a thread, until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Server(backend, "tiny").app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield Live(backend, port)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        backend.close()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with serving(load_backend("tiny", BackendOptions(device="cpu"))) as server:
        yield server


def texts(events: list[tuple[float, Any]], chat: bool) -> list[str]:
    """The text pieces of a stream's chunks (choice 0)."""
    choices = [e["choices"][0] for _, e in events[:-1]]
    return [c["delta"].get("content", "") if chat else c["text"] for c in choices]


def engine_idle(live: Live) -> bool:
    llm = live.backend.llm
    return (not llm.scheduler.running and not llm.scheduler.waiting
            and llm.block_manager.num_free_blocks == llm.block_manager.num_blocks)


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_pieces_join_to_the_greedy_answer(live: Live, chat: bool) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    payload: dict[str, Any] = {"max_tokens": 40, "temperature": 0}
    payload.update({"messages": [{"role": "user", "content": PROMPT}]} if chat else {"prompt": PROMPT})
    status, whole = live.post(path, payload)
    assert status == 200, whole
    want = whole["choices"][0]["message"]["content"] if chat else whole["choices"][0]["text"]
    start = time.monotonic()
    events = list(live.stream(path, payload))
    assert events[-1][1] == "[DONE]"
    pieces = texts(events, chat)
    assert "".join(pieces) == want and REPLACEMENT not in want
    assert events[-2][1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "length"
    if chat:
        assert events[0][1]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert events[0][1]["object"] == "chat.completion.chunk"
    # Token by token: many pieces, the first long before the end.
    arrivals = [t for (t, _), piece in zip(events, pieces) if piece]
    assert len(arrivals) >= 20
    assert arrivals[0] - start < (events[-1][0] - start) / 2
    assert engine_idle(live)


@pytest.mark.parametrize("chat", [False, True])
def test_include_usage_ends_the_stream_with_the_whole_answers_counts(live: Live, chat: bool) -> None:
    """``stream_options.include_usage``: one last chunk with no choices and the counts a whole
    answer reports (two choices of one prompt count its tokens once); without it, no such chunk."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    payload: dict[str, Any] = {"max_tokens": 7, "temperature": 0, "n": 2}
    payload.update({"messages": [{"role": "user", "content": PROMPT}]} if chat else {"prompt": PROMPT})
    _, whole = live.post(path, payload)
    events = [e for _, e in live.stream(path, {**payload, "stream_options": {"include_usage": True}})]
    assert events[-1] == "[DONE]" and events[-2]["choices"] == []
    assert events[-2]["usage"] == whole["usage"] and whole["usage"]["completion_tokens"] == 14
    assert all("usage" not in e for e in events[:-2])
    plain = [e for _, e in live.stream(path, payload)]
    assert all(e == "[DONE]" or e["choices"] for e in plain)
    status, error = live.post(path, {**payload, "stream": True, "stream_options": "yes"})
    assert status == 400 and error["error"]["param"] == "stream_options"


def test_a_request_arriving_mid_generation_finishes_before_the_long_one(live: Live) -> None:
    """Continuous admission: the short request joins the running long one at the next step;
    a batcher that waits for the batch in progress would answer it after the long one ends."""
    short = {"prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0}
    _, alone = live.post("/v1/completions", short)
    answered: dict[str, Any] = {}

    def ask() -> None:
        answered["body"] = live.post("/v1/completions", short)[1]
        answered["at"] = time.monotonic()

    asker = threading.Thread(target=ask)
    events = []
    for event in live.stream("/v1/completions", {"prompt": PROMPT, "max_tokens": 150, "temperature": 0}):
        events.append(event)
        if len(events) == 2:  # the long one is generating
            asker.start()
    asker.join(timeout=120)
    assert events[-2][1]["choices"][0]["finish_reason"] == "length"
    assert answered["at"] < events[-1][0]
    assert answered["body"]["choices"][0]["text"] == alone["choices"][0]["text"]


def test_a_disconnected_stream_is_aborted_and_the_server_keeps_serving(live: Live) -> None:
    llm = live.backend.llm
    generated = llm.stats.generated_tokens
    conn = live.connect()
    conn.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 3000, "temperature": 0,
                                                        "stream": True}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    for _ in range(3):  # a few pieces in: the sequence is running
        assert response.readline()
    (seq,) = llm.scheduler.running
    response.close()
    conn.close()
    deadline = time.monotonic() + 60
    while not engine_idle(live):
        assert time.monotonic() < deadline, "the abandoned sequence still holds the engine"
        time.sleep(0.05)
    assert seq.finish_reason is None  # dropped: it neither stopped nor ran to its 3000 tokens
    assert llm.stats.generated_tokens - generated < 1000
    status, body = live.post("/v1/completions", {"prompt": "ok", "max_tokens": 2})
    assert status == 200 and body["choices"][0]["finish_reason"]


def test_stop_strings_never_leak_into_the_stream(live: Live) -> None:
    """The stop string starts on the last character of one piece and ends in the next: that
    character must wait until the next token shows whether the stop string follows."""
    base = {"prompt": PROMPT, "max_tokens": 40, "temperature": 0}
    pieces = [p for p in texts(list(live.stream("/v1/completions", base)), chat=False) if p]
    text, at = "".join(pieces), 0
    for before, after in zip(pieces, pieces[1:]):
        at += len(before)
        stop = before[-1] + after[:2]
        if len(after) >= 2 and text.find(stop) == at - 1 and at > 5:
            break
    else:
        pytest.fail(f"no stop string spans two pieces of {pieces}")
    cut = text[: at - 1]
    _, stopped = live.post("/v1/completions", {**base, "stop": [stop]})
    assert stopped["choices"][0]["text"] == cut
    events = list(live.stream("/v1/completions", {**base, "stop": [stop]}))
    assert "".join(texts(events, chat=False)) == cut
    assert events[-2][1]["choices"][0]["finish_reason"] == "stop"


def test_a_refused_stream_gets_an_http_error(live: Live) -> None:
    """A request the engine cannot take (more tokens than its KV cache) is answered with a
    JSON error before the stream starts, and the server keeps serving."""
    conn = live.connect()
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 10_000_000, "stream": True}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 400 and "max_tokens" in json.loads(response.read())["error"]["message"]
    assert engine_idle(live)


def test_echo_with_logprobs_streams_the_scored_prompt(live: Live) -> None:
    """Scoring shares the engine with the step loop: the echoed tokens' log-probabilities come
    in the final chunk, equal to the non-streamed answer's."""
    payload = {"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 0}
    _, whole = live.post("/v1/completions", payload)
    events = list(live.stream("/v1/completions", payload))
    assert "".join(texts(events, chat=False)) == whole["choices"][0]["text"]
    assert events[-2][1]["choices"][0]["logprobs"]["tokens"] == whole["choices"][0]["logprobs"]["tokens"]


def test_the_detokenizer_never_splits_a_character(live: Live) -> None:
    tokenizer = live.backend.tokenizer
    text = "naïve 𝔸𝔹 ⅋ 😀 日本語 done"
    ids = tokenizer.encode(text)
    assert any(tokenizer.decode(ids[:k]).endswith(REPLACEMENT) for k in range(1, len(ids)))  # a split exists
    detokenizer, pieces = IncrementalDetokenizer(tokenizer), []
    for k in range(1, len(ids) + 1):
        pieces.append(detokenizer.push(ids[:k]))
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any(REPLACEMENT in p for p in pieces)
    assert sum(1 for p in pieces if p) > 5  # and pieces do come out as it goes


@pytest.mark.parametrize(("text", "stops", "held"), [
    ("abc ST", ("STOP",), 2), ("abc S", ("STOP", "SX"), 1), ("abc", ("STOP",), 0), ("STO", ("STOP",), 3),
    ("xx", ("x",), 0),  # a whole stop string ends the output in the engine: nothing to wait for
])
def test_stop_prefix_length(text: str, stops: tuple[str, ...], held: int) -> None:
    assert stop_prefix_length(text, stops) == held


def test_a_backend_without_live_generation_streams_its_whole_answer() -> None:
    """Backends that answer whole lists keep the batched path: the stream carries each answer
    in one piece when it is done."""
    with serving(FakeBackend()) as fake:
        _, whole = fake.post("/v1/completions", {"prompt": PROMPT, "n": 2})
        events = list(fake.stream("/v1/completions", {"prompt": PROMPT, "n": 2}))
    chunks = [e["choices"][0] for _, e in events[:-1]]
    assert [(c["index"], c["text"], c["finish_reason"]) for c in chunks] == [
        (0, whole["choices"][0]["text"], None), (0, "", "stop"), (1, whole["choices"][1]["text"], None), (1, "", "stop")]
    assert fake.backend.calls == [2, 2]  # one batched call per response
