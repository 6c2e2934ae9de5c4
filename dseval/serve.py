"""``dseval serve``: any model spec behind an OpenAI-compatible HTTP API.

Endpoints: ``POST /v1/completions`` (``echo`` with ``logprobs`` returns prompt log-probabilities,
so loglikelihood clients such as lm-evaluation-harness's ``local-completions`` and dseval's own
``openai:`` backend work through it), ``POST /v1/chat/completions`` (the backend's chat
template), ``GET /v1/models``, ``GET /health``; ``"stream": true`` answers as server-sent
events. Concurrent requests share backend calls through :class:`dseval.batcher.Batcher`.

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

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}
        return JSONResponse(body, status_code=self.status)


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
            except ApiError as err:
                return err.response()
            except UserError as err:
                return ApiError(400, str(err)).response()
            except Exception as err:  # noqa: BLE001 - a backend failure must not stop the server
                return ApiError(500, f"{type(err).__name__}: {err}", kind="server_error").response()
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
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
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
        payload = self._envelope("text_completion", choices, prompt_tokens, completion_tokens)
        return self._stream(payload, "text") if body.get("stream") else JSONResponse(payload)

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
        results: list[GenerateResult] = await asyncio.gather(*(self._ask("chat", r) for r in requests))
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "finish_reason": r.finish_reason}
                   for i, r in enumerate(results)]
        payload = self._envelope("chat.completion", choices, results[0].prompt_tokens or 0, sum(r.num_tokens for r in results))
        return self._stream(payload, "delta") if body.get("stream") else JSONResponse(payload)

    @staticmethod
    def _stream(payload: dict[str, Any], field: str) -> StreamingResponse:
        """Server-sent events: one chunk per choice with its whole text (the backends answer
        whole completions), a final chunk per choice with its finish reason, then [DONE]."""
        kind = "chat.completion.chunk" if field == "delta" else "text_completion"

        async def events() -> AsyncIterator[str]:
            for choice in payload["choices"]:
                text = choice["message"]["content"] if field == "delta" else choice["text"]
                part = {"role": "assistant", "content": text} if field == "delta" else text
                chunks = [{field: part, "finish_reason": None}, {field: {} if field == "delta" else "",
                                                                 "finish_reason": choice["finish_reason"]}]
                for chunk in chunks:
                    event = {**{k: payload[k] for k in ("id", "created", "model")}, "object": kind,
                             "choices": [{"index": choice["index"], **chunk}]}
                    yield f"data: {json.dumps(event)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
