"""``openai:URL#MODEL``: an OpenAI-compatible completions server (vLLM, SGLang, LMDeploy,
TensorRT-LLM, LightLLM) for models larger than one machine.

Requests go to ``{URL}/completions`` concurrently (``--batch-size`` in flight), each answer is
reported as it arrives, and transient failures (connection errors, 429, 5xx) are retried with
backoff. Loglikelihood uses prompt log-probabilities: the prompt is ``context + continuation``
with ``echo``, and the continuation's tokens are those whose text offset lies at or past the end
of the context (after moving the context's trailing whitespace to the continuation, the same
boundary rule as the built-in engine). Rolling loglikelihood echoes the whole text and sums
every token's prompt log-probability the server gives (it gives none for the first token when
it adds no BOS; ``num_tokens`` counts those scored). The text is sent in one piece, so a text
longer than the server's context fails with the server's error instead of being windowed.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from dseval.backends.base import BackendOptions, ModelBackend, OnResult
from dseval.errors import UserError
from dseval.requests import (
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    LoglikelihoodRollingRequest,
    LoglikelihoodRollingResult,
)

T = TypeVar("T")
RETRIES = 5
TIMEOUT_S = 600.0


def split_boundary(context: str, continuation: str) -> tuple[str, str]:
    """Move trailing whitespace of the context to the continuation (" A" is one token)."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


class OpenAIBackend(ModelBackend):
    def __init__(self, base_url: str, model: str, concurrency: int, api_key: str | None = None) -> None:
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.concurrency = concurrency
        self.api_key = api_key
        self.description = f"OpenAI-compatible endpoint {base_url} ({model})"

    @classmethod
    def from_spec(cls, arg: str, options: BackendOptions) -> OpenAIBackend:
        url, _, model = arg.partition("#")
        if not url.startswith(("http://", "https://")) or not model:
            raise UserError(f"openai spec needs URL#MODEL, e.g. openai:http://127.0.0.1:8000/v1#deepseek-v3; got {arg!r}")
        return cls(url, model, options.batch_size, os.environ.get("OPENAI_API_KEY"))

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({"model": self.model, **payload}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(RETRIES):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500:
                    detail = err.read().decode(errors="replace")[:300]
                    raise UserError(f"{self.url}: HTTP {err.code}: {detail}") from err
                last: Exception = err
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = err
            time.sleep(min(2**attempt * 0.5, 8.0))
        raise UserError(f"{self.url}: no answer after {RETRIES} tries ({last})")

    def _fan_out(self, items: Sequence[Any], call: Callable[[Any], T], on_result: OnResult[T] | None) -> list[T]:
        results: list[T | None] = [None] * len(items)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(call, item): index for index, item in enumerate(items)}
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_result:
                    on_result(index, results[index])  # called from this thread only
        return results  # type: ignore[return-value]

    def _generate_one(self, request: GenerateRequest) -> GenerateResult:
        payload: dict[str, Any] = {
            "prompt": request.prompt,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.top_k:
            payload["top_k"] = request.top_k
        choice = self._post(payload)["choices"][0]
        text = choice.get("text", "")
        for stop in request.stop:  # servers differ on whether they cut; cut here too
            cut = text.find(stop)
            text = text if cut < 0 else text[:cut]
        usage = choice.get("logprobs") or {}
        return GenerateResult(text=text, num_tokens=len(usage.get("tokens", [])), finish_reason=choice.get("finish_reason") or "stop")

    def _prompt_logprobs(self, text: str) -> dict[str, Any]:
        """The server's per-token log-probabilities of ``text`` itself (echo, one new token)."""
        payload = {"prompt": text, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        logprobs = self._post(payload)["choices"][0].get("logprobs")
        if not logprobs or "text_offset" not in logprobs:
            raise UserError(f"{self.url}: server returned no prompt logprobs (it must support echo with logprobs)")
        return logprobs

    def _rolling_one(self, request: LoglikelihoodRollingRequest) -> LoglikelihoodRollingResult:
        logprobs = self._prompt_logprobs(request.text)
        scored = [lp for offset, lp in zip(logprobs["text_offset"], logprobs["token_logprobs"], strict=True)
                  if offset < len(request.text) and lp is not None]  # not the generated token, nor an unscored first
        return LoglikelihoodRollingResult(logprob=sum(scored), num_tokens=len(scored))

    def _loglikelihood_one(self, request: LoglikelihoodRequest) -> LoglikelihoodResult:
        context, continuation = split_boundary(request.context, request.continuation)
        logprobs = self._prompt_logprobs(context + continuation)
        total, greedy = 0.0, True
        end = len(context + continuation)
        tops = logprobs.get("top_logprobs") or []
        for i, (token, offset, logprob) in enumerate(zip(logprobs["tokens"], logprobs["text_offset"], logprobs["token_logprobs"], strict=True)):
            if offset < len(context) or offset >= end:
                continue  # context tokens, or the one generated token after the prompt
            total += logprob
            if i < len(tops) and tops[i]:
                greedy = greedy and max(tops[i], key=tops[i].get) == token
        return LoglikelihoodResult(logprob=total, is_greedy=greedy)

    def generate(self, requests: Sequence[GenerateRequest], on_result: OnResult[GenerateResult] | None = None) -> list[GenerateResult]:
        return self._fan_out(requests, self._generate_one, on_result)

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], on_result: OnResult[LoglikelihoodResult] | None = None
    ) -> list[LoglikelihoodResult]:
        return self._fan_out(requests, self._loglikelihood_one, on_result)

    def loglikelihood_rolling(
        self, requests: Sequence[LoglikelihoodRollingRequest], on_result: OnResult[LoglikelihoodRollingResult] | None = None
    ) -> list[LoglikelihoodRollingResult]:
        return self._fan_out(requests, self._rolling_one, on_result)
