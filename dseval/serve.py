"""``dseval serve``: any model spec behind an OpenAI-compatible HTTP API.

Endpoints: ``POST /v1/completions`` (``echo`` with ``logprobs`` returns prompt log-probabilities,
so loglikelihood clients such as lm-evaluation-harness's ``local-completions`` and dseval's own
``openai:`` backend work through it), ``POST /v1/chat/completions`` (the backend's chat
template), ``GET /v1/models``, ``GET /health``. Concurrent requests share the backend through
:class:`dseval.batcher.Batcher`.

With the built-in engine on one process, generation is continuous: a request joins the running
ones at the next model step, and ``"stream": true`` sends its text as server-sent events piece
by piece as it decodes (never half a UTF-8 character, never a stop string or text after it); a
client that disconnects mid-stream has its request dropped from the engine. Other backends
(``openai:``, ``replay:``) and any torchrun launch (``--tp``/``--ep``/``--dp``) answer
requests that arrive together in one batched call, and a stream carries the whole answer in one
piece when it is done. Scoring requests (``echo`` with ``logprobs``) are always batched calls.

Every error is an OpenAI-style JSON body with a 4xx status (5xx only for a backend failure),
and the server keeps serving. The optional API key is compared in constant time and never
logged or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dseval.backends.base import ModelBackend, PromptToken
from dseval.batcher import Batcher
from dseval.distributed import Topology
from dseval.errors import UserError
from dseval.requests import ChatRequest, GenerateRequest, GenerateResult

#: Bodies larger than this are refused with 413 before they are parsed.
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024


class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)

    @classmethod
    def of(cls, err: Exception) -> ApiError:
        """``err`` as the client sees it: a bad request (400) or the backend's failure (500)."""
        if isinstance(err, ApiError):
            return err
        if isinstance(err, UserError):
            return cls(400, str(err))
        return cls(500, f"{type(err).__name__}: {err}", kind="server_error")


#: The roles a chat template renders; a message with another would silently vanish from the prompt.
CHAT_ROLES = ("system", "user", "assistant")


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float | None = None,
            integer: bool = False) -> Any:
    value = body.get(name, default)
    if value is None:
        value = default
    wanted = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ApiError(400, f"'{name}' must be {'an integer' if integer else 'a number'} {bounds}, got {value!r}", param=name)
    return value


def sampling_request(body: dict[str, Any], prompt: str, default_max_tokens: int, index: int = 0) -> GenerateRequest:
    """A generate request from OpenAI sampling fields, validated here so that one bad request
    never fails the batch it would have joined. ``index`` numbers the ``n`` choices of one
    prompt: each draws with its own seed."""
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of non-empty strings", param="stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "'seed' must be an integer", param="seed")
    top_k = _number(body, "top_k", 0, -1, integer=True)
    return GenerateRequest(
        prompt=prompt,
        stop=tuple(stop),
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", default_max_tokens, 0, integer=True),
        temperature=temperature,
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        top_k=max(top_k, 0),
        seed=secrets.randbits(31) if seed is None else seed + index,
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def wants_usage(body: dict[str, Any]) -> bool:
    """OpenAI's ``stream_options: {"include_usage": true}``: a last chunk with the token counts."""
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    return bool((options or {}).get("include_usage"))


def logprobs_block(tokens: list[PromptToken]) -> dict[str, Any]:
    """The completions API's ``logprobs`` object for echoed prompt tokens."""
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [None if t.top_text is None else {t.top_text: t.top_logprob} for t in tokens],
        "text_offset": [t.offset for t in tokens],
    }


class Server:
    """Routes OpenAI requests to one backend through a batcher."""

    def __init__(self, backend: ModelBackend, model_name: str, api_key: str | None = None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, topology: Topology | None = None) -> None:
        self.batcher = Batcher(backend, topology)
        self.backend = backend
        self.model_name = model_name
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes

    def app(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self._guarded(self.models), methods=["GET"]),
            Route("/v1/completions", self._guarded(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._guarded(self.chat_completions), methods=["POST"]),
        ]
        return Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        self.batcher.close()

    # ------------------------------------------------------------------ plumbing
    def _guarded(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                self._authorize(request)
                return await handler(request)
            except Exception as err:  # noqa: BLE001 - a backend failure must not stop the server
                return ApiError.of(err).response()
        return endpoint

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", kind="authentication_error")

    async def _body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise ApiError(413, f"request body over {self.max_request_bytes} bytes")
        raw = await request.body()
        if len(raw) > self.max_request_bytes:
            raise ApiError(413, f"request body over {self.max_request_bytes} bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise ApiError(404, f"model {model!r} is not served here; GET /v1/models lists {self.model_name!r}",
                           param="model")
        return body

    async def _ask(self, kind: str, request: Any) -> Any:
        return await asyncio.wrap_future(self.batcher.submit(kind, request))

    def _envelope(self, kind: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int
                  ) -> dict[str, Any]:
        return {
            "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{secrets.token_hex(12)}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
        }

    # ------------------------------------------------------------------ endpoints
    async def health(self, request: Request) -> Response:
        """Up, and each model replica's ranks and backend requests (so far, and failed): under
        ``--dp`` it shows that every replica takes work."""
        return JSONResponse({"status": "ok", "replicas": [vars(r) for r in self.batcher.replicas]})

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "dseval"}]})

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", param="prompt")
        n = _number(body, "n", 1, 1, 64, integer=True)
        echo, want_logprobs = bool(body.get("echo")), body.get("logprobs") is not None
        requests = [sampling_request(body, p, 16, i) for p in prompts for i in range(n)]
        if body.get("stream"):
            return await self._stream("generate", requests, wants_usage(body), echo, echo and want_logprobs)
        results: list[GenerateResult] = await asyncio.gather(
            *(self._ask("generate", r) for r in requests if r.max_tokens > 0))
        texts = iter(results)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, req in enumerate(requests):
            result = next(texts) if req.max_tokens > 0 else GenerateResult(text="", finish_reason="length")
            completion_tokens += result.num_tokens
            prompt_tokens += (result.prompt_tokens or 0) if index % n == 0 else 0  # each prompt once
            choice: dict[str, Any] = {"index": index, "text": (req.prompt if echo else "") + result.text,
                                      "logprobs": None, "finish_reason": result.finish_reason}
            if echo and want_logprobs:  # prompt (and generated) tokens, scored in one pass
                choice["logprobs"] = logprobs_block(await self._ask("prompt_logprobs", (req.prompt, result.text)))
            choices.append(choice)
        return JSONResponse(self._envelope("text_completion", choices, prompt_tokens, completion_tokens))

    async def chat_completions(self, request: Request) -> Response:
        body = await self._body(request)
        messages = body.get("messages")
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str)
                           for m in messages)):
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects, role one of "
                           f"{', '.join(CHAT_ROLES)} (a chat template drops others) and content a string", param="messages")
        conversation = tuple({"role": m["role"], "content": m["content"]} for m in messages)
        n = _number(body, "n", 1, 1, 64, integer=True)
        requests = [ChatRequest(**{**vars(sampling_request(body, "", 1024, i)), "messages": conversation}) for i in range(n)]
        if body.get("stream"):
            return await self._stream("chat", requests, wants_usage(body))
        results: list[GenerateResult] = await asyncio.gather(*(self._ask("chat", r) for r in requests))
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "finish_reason": r.finish_reason}
                   for i, r in enumerate(results)]
        return JSONResponse(self._envelope("chat.completion", choices, results[0].prompt_tokens or 0,
                                           sum(r.num_tokens for r in results)))

    async def _stream(self, kind: str, requests: list[GenerateRequest], with_usage: bool, echo: bool = False,
                      logprobs: bool = False) -> StreamingResponse:
        """Server-sent events of ``requests`` (the choices of one response): per choice an
        opening chunk (chat: the role; ``echo``: the prompt), its text as the backend hands it
        out, a chunk with its finish reason (and, with ``logprobs``, the echoed tokens'
        log-probabilities), ``with_usage`` a chunk with no choices and the token counts (each
        distinct prompt counted once, as in a whole answer), then ``[DONE]``. The response starts once the first piece is in,
        so a request the backend refuses is still answered with an HTTP error; a failure later
        ends the stream with an error event. A client gone mid-stream has its requests aborted."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, str | Future]] = asyncio.Queue()

        def put(event: tuple[int, str | Future]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        futures: list[Future] = []
        for i, req in enumerate(requests):
            if kind == "generate" and req.max_tokens == 0:  # nothing to generate
                future: Future = Future()
                future.set_result(GenerateResult(text="", finish_reason="length"))
            else:  # the batcher calls on_text before it resolves the future, both in order through put
                future = self.batcher.submit(kind, req, lambda text, i=i: put((i, text)))
            future.add_done_callback(lambda f, i=i: put((i, f)))
            futures.append(future)
        first = await events.get()
        if isinstance(first[1], Future) and first[1].exception() is not None:
            self._abort(futures)
            raise first[1].exception()  # type: ignore[misc]
        chat = kind == "chat"
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_name}

        def chunk(index: int, text: str | None, finish_reason: str | None = None, **extra: Any) -> str:
            part = ({"delta": {} if text is None else {"content": text}} if chat
                    else {"text": text or "", "logprobs": None})
            choice = {"index": index, **part, **extra, "finish_reason": finish_reason}
            return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

        async def stream() -> AsyncIterator[str]:
            sent, left, event = [0] * len(requests), len(requests), first
            prompt_tokens: dict[str, int] = {}  # per distinct prompt
            completion_tokens = 0
            try:
                for i, req in enumerate(requests):
                    if chat:
                        yield chunk(i, None, delta={"role": "assistant", "content": ""})
                    elif echo:
                        yield chunk(i, req.prompt)
                while True:
                    i, item = event
                    if isinstance(item, str):
                        sent[i] += len(item)
                        yield chunk(i, item)
                    else:
                        result: GenerateResult = item.result()
                        prompt = json.dumps([requests[i].prompt, getattr(requests[i], "messages", None)])
                        prompt_tokens[prompt] = result.prompt_tokens or 0
                        completion_tokens += result.num_tokens
                        if rest := result.text[sent[i]:]:
                            yield chunk(i, rest)
                        extra = {}
                        if logprobs:
                            scored = await self._ask("prompt_logprobs", (requests[i].prompt, result.text))
                            extra["logprobs"] = logprobs_block(scored)
                        yield chunk(i, None, result.finish_reason, **extra)
                        left -= 1
                        if not left:
                            break
                    event = await events.get()
                if with_usage:
                    counts = usage(sum(prompt_tokens.values()), completion_tokens)
                    yield f"data: {json.dumps({**head, 'choices': [], 'usage': counts})}\n\n"
                yield "data: [DONE]\n\n"
            except Exception as err:  # noqa: BLE001 - the status is sent already: an error event ends the stream
                yield f"data: {json.dumps(ApiError.of(err).body())}\n\n"
            finally:
                self._abort(futures)

        return StreamingResponse(stream(), media_type="text/event-stream")

    def _abort(self, futures: list[Future]) -> None:
        for future in futures:
            if not future.done():
                self.batcher.abort(future)
