"""``openai:URL#MODEL``: an OpenAI-compatible completions server (vLLM, SGLang, LMDeploy,
TensorRT-LLM, LightLLM) for models larger than one machine.

Requests go to ``{URL}/completions`` from ``--concurrency`` worker threads (default
``--batch-size``), each answer is reported as it arrives, and transient failures (connection
errors, timeouts, 429, 5xx, a body that is not a completion) are retried ``--max-retries`` times
with backoff. A client error (other 4xx), retries running out, or Ctrl-C stops every worker:
queued requests are never sent, in-flight ones are abandoned (the workers are daemon threads, so
the process exits without waiting for their sockets), and the answers already reported stay
with the runner, which has written them. Loglikelihood uses prompt log-probabilities: the prompt
is ``context + continuation`` with ``echo``, and the continuation's tokens are those whose text
offset lies at or past the end of the context (after moving the context's trailing whitespace to
the continuation, the same boundary rule as the built-in engine). The API key
(``$OPENAI_API_KEY``) goes into the Authorization header only; it is cut out of every error.
Rolling loglikelihood echoes the whole text and sums every token's prompt log-probability the
server gives (none for the first token when it adds no BOS; ``num_tokens`` counts those scored).
The text is sent in one piece, so a text longer than the server's context fails with the
server's error instead of being windowed.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dseval.backends.base import BackendOptions, ModelBackend, OnResult
from dseval.errors import UserError
from dseval.requests import (
    ChatRequest,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    LoglikelihoodRollingRequest,
    LoglikelihoodRollingResult,
)

T = TypeVar("T")
#: Per worker thread: the stop flag of the call it serves (a thread outside any call never stops).
_worker = threading.local()
_NEVER = threading.Event()
#: How often the collecting thread looks up from waiting (it must notice Ctrl-C promptly).
POLL_S = 0.1


class Malformed(Exception):
    """A 200 answer that is not a completion (bad JSON, no ``choices``): retried like a 5xx."""


def split_boundary(context: str, continuation: str) -> tuple[str, str]:
    """Move trailing whitespace of the context to the continuation (" A" is one token)."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


class OpenAIBackend(ModelBackend):
    spec_help = "an OpenAI-compatible completions endpoint (vLLM, SGLang, ...): openai:URL#MODEL"

    def __init__(self, base_url: str, model: str, concurrency: int, api_key: str | None = None,
                 timeout: float = 600.0, max_retries: int = 5) -> None:
        self.url = base_url.rstrip("/") + "/completions"
        self.chat_url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.concurrency = concurrency
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.description = f"OpenAI-compatible endpoint {base_url} ({model})"

    @classmethod
    def from_spec(cls, arg: str, options: BackendOptions) -> OpenAIBackend:
        url, _, model = arg.partition("#")
        if not url.startswith(("http://", "https://")) or not model:
            raise UserError(f"openai spec needs URL#MODEL, e.g. openai:http://127.0.0.1:8000/v1#deepseek-v3; got {arg!r}")
        return cls(url, model, options.in_flight(), os.environ.get("OPENAI_API_KEY"),
                   options.timeout or 600.0, options.max_retries)

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def _post(self, payload: dict[str, Any], parse: Callable[[dict[str, Any]], T], url: str | None = None) -> T:
        """One completion (from ``url``, default the completions endpoint) turned into a result
        by ``parse``; retries what may pass (including answers ``parse`` finds malformed), raises
        UserError for what will not."""
        url = url or self.url
        body = json.dumps({"model": self.model, **payload}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        stop = getattr(_worker, "stop", _NEVER)
        for attempt in range(self.max_retries + 1):
            if stop.is_set():
                raise _Stopped
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return parse(_completion(raw))
            except urllib.error.HTTPError as err:
                detail = " ".join(err.read().decode(errors="replace").split())[:200]
                if err.code != 429 and err.code < 500:
                    raise UserError(self._redact(f"{url}: HTTP {err.code}: {detail}; check the model name, "
                                                 f"the API key and the server's options")) from None
                last = f"HTTP {err.code}: {detail}"
            except Malformed as err:
                last = f"malformed answer: {err}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last = str(getattr(err, "reason", err))
            stop.wait(min(2**attempt * 0.5, 8.0))
        raise UserError(self._redact(f"{url}: no valid answer after {self.max_retries + 1} tries (last: {last}); "
                                     f"check the server, or raise --max-retries/--timeout; finished samples are kept"))

    def _fan_out(self, items: Sequence[Any], call: Callable[[Any], T], on_result: OnResult[T] | None) -> list[T]:
        """Run ``call`` over ``items`` on daemon workers; report results from this thread.

        The first failure (or Ctrl-C here) sets the stop flag: workers take no new item and
        abandon retries, and this thread returns at once without joining them.
        """
        stop = threading.Event()  # this call's: a worker abandoned by an earlier call never sees it cleared
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(items)):
            todo.put(index)
        done: queue.SimpleQueue[tuple[int, Any, BaseException | None]] = queue.SimpleQueue()

        def work() -> None:
            _worker.stop = stop
            while not stop.is_set():
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((index, call(items[index]), None))
                except _Stopped:
                    return
                except BaseException as err:  # handed to the collecting thread, which raises it
                    stop.set()  # now, not when that thread wakes: no worker takes another item
                    done.put((index, None, err))
                    return

        for _ in range(min(self.concurrency, len(items))):
            threading.Thread(target=work, daemon=True, name="dseval-openai").start()
        results: list[T | None] = [None] * len(items)
        try:
            for _ in range(len(items)):
                while True:
                    try:
                        index, result, error = done.get(timeout=POLL_S)
                        break
                    except queue.Empty:
                        continue
                if error is not None:
                    raise error
                results[index] = result
                if on_result:
                    on_result(index, result)
        finally:
            stop.set()
        return results  # type: ignore[return-value]

    @staticmethod
    def sampling_payload(request: GenerateRequest) -> dict[str, Any]:
        """A request's sampling settings as OpenAI API fields (``top_k`` is vLLM's and SGLang's
        extension, sent only when set)."""
        payload: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature,
                                   "top_p": request.top_p, "seed": request.seed}
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.top_k:
            payload["top_k"] = request.top_k
        return payload

    def _generate_one(self, request: GenerateRequest) -> GenerateResult:
        payload = {"prompt": request.prompt, **self.sampling_payload(request)}
        return self._post(payload, lambda answer: self._generated(answer, request))

    def _generated(self, answer: dict[str, Any], request: GenerateRequest) -> GenerateResult:
        choice = answer["choices"][0]
        text = choice.get("text")
        if not isinstance(text, str):
            raise Malformed(f"choice without a 'text' string: {str(choice)[:120]}")
        return self._result(choice, answer, request, text)

    @staticmethod
    def _result(choice: dict[str, Any], answer: dict[str, Any], request: GenerateRequest, text: str) -> GenerateResult:
        """A choice's text cut at the request's stop strings, with the answer's token counts."""
        for stop in request.stop:  # servers differ on whether they cut; cut here too
            cut = text.find(stop)
            text = text if cut < 0 else text[:cut]
        usage = answer.get("usage") or {}
        tokens = usage.get("completion_tokens", len((choice.get("logprobs") or {}).get("tokens", [])))
        return GenerateResult(text=text, num_tokens=tokens, finish_reason=choice.get("finish_reason") or "stop",
                              prompt_tokens=usage.get("prompt_tokens"))

    def _chat_one(self, request: ChatRequest) -> GenerateResult:
        payload = {"messages": [dict(m) for m in request.messages], **self.sampling_payload(request)}
        return self._post(payload, lambda body: self._chatted(body, request), self.chat_url)

    def _chatted(self, body: dict[str, Any], request: ChatRequest) -> GenerateResult:
        choice = body["choices"][0]
        message = choice.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content", 0), str | None):
            raise Malformed(f"no choices[0].message.content in {json.dumps(body)[:120]}")  # retried
        return self._result(choice, body, request, message["content"] or "")

    def _rolling_one(self, request: LoglikelihoodRollingRequest) -> LoglikelihoodRollingResult:
        payload = {"prompt": request.text, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        return self._post(payload, lambda answer: self._rolled(answer, request.text))

    def _rolled(self, answer: dict[str, Any], text: str) -> LoglikelihoodRollingResult:
        logprobs = answer["choices"][0].get("logprobs")
        if not logprobs or "text_offset" not in logprobs:
            raise UserError(f"{self.url}: server returned no prompt logprobs (it must support echo with logprobs)")
        try:
            scored = [lp for offset, lp in zip(logprobs["text_offset"], logprobs["token_logprobs"], strict=True)
                      if offset < len(text) and lp is not None]  # not the generated token, nor an unscored first
        except (KeyError, TypeError, ValueError) as err:
            raise Malformed(f"logprobs do not line up ({err!r})") from None
        return LoglikelihoodRollingResult(logprob=sum(scored), num_tokens=len(scored))

    def _loglikelihood_one(self, request: LoglikelihoodRequest) -> LoglikelihoodResult:
        context, continuation = split_boundary(request.context, request.continuation)
        payload = {"prompt": context + continuation, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        return self._post(payload, lambda answer: self._scored(answer, context, continuation))

    def _scored(self, answer: dict[str, Any], context: str, continuation: str) -> LoglikelihoodResult:
        logprobs = answer["choices"][0].get("logprobs")
        if not logprobs or "text_offset" not in logprobs:
            raise UserError(f"{self.url}: server returned no prompt logprobs (it must support echo with logprobs)")
        try:
            return self._sum_continuation(logprobs, context, continuation)
        except (KeyError, TypeError, ValueError) as err:  # lists of unequal length, missing keys, non-numbers
            raise Malformed(f"logprobs do not line up ({err!r})") from None

    def _sum_continuation(self, logprobs: dict[str, Any], context: str, continuation: str) -> LoglikelihoodResult:
        total, greedy, counted = 0.0, True, 0
        end = len(context + continuation)
        tops = logprobs.get("top_logprobs") or []
        for i, (token, offset, logprob) in enumerate(zip(logprobs["tokens"], logprobs["text_offset"], logprobs["token_logprobs"], strict=True)):
            if offset >= end:
                continue  # the one generated token after the prompt
            counted += 1
            if offset < len(context):
                continue  # context tokens
            total += float(logprob)
            if i < len(tops) and tops[i]:
                greedy = greedy and max(tops[i], key=tops[i].get) == token
        return LoglikelihoodResult(logprob=total, is_greedy=greedy, prompt_tokens=counted)

    def generate(self, requests: Sequence[GenerateRequest], on_result: OnResult[GenerateResult] | None = None) -> list[GenerateResult]:
        return self._fan_out(requests, self._generate_one, on_result)

    def chat(self, requests: Sequence[ChatRequest], on_result: OnResult[GenerateResult] | None = None) -> list[GenerateResult]:
        """Chat requests go to the server's ``/chat/completions`` as messages: the server applies
        the model's chat template, so ``--chat`` runs need no template here."""
        return self._fan_out(requests, self._chat_one, on_result)

    def recorded_chat(self, messages: list[dict[str, str]]) -> str:
        return json.dumps(messages, ensure_ascii=False)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        raise UserError(f"{self.description}: the server applies its chat template to chat requests only, so "
                        "loglikelihood tasks (e.g. mmlu) cannot run with --chat here; run them without --chat, or "
                        "with --chat on the checkpoint itself")

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], on_result: OnResult[LoglikelihoodResult] | None = None
    ) -> list[LoglikelihoodResult]:
        return self._fan_out(requests, self._loglikelihood_one, on_result)

    def loglikelihood_rolling(
        self, requests: Sequence[LoglikelihoodRollingRequest], on_result: OnResult[LoglikelihoodRollingResult] | None = None
    ) -> list[LoglikelihoodRollingResult]:
        return self._fan_out(requests, self._rolling_one, on_result)


class _Stopped(Exception):
    """Raised in a worker when another one failed or the run was interrupted."""


def _completion(raw: bytes) -> dict[str, Any]:
    """The parsed body of a completion, or :class:`Malformed` saying what is wrong with it."""
    try:
        answer = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Malformed(f"not JSON ({err})") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list) or not answer["choices"] \
            or not isinstance(answer["choices"][0], dict):
        raise Malformed(f"no 'choices' list in {' '.join(raw.decode(errors='replace').split())[:120]!r}")
    return answer
