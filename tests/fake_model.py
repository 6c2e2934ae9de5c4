"""A deterministic fake model for the harness's own tests (never part of the product).

Its answers are a pure function of the request, so two runs (or a killed and resumed run)
give identical samples. ``FakeBackend.register()`` makes ``fake:MODE`` specs load it, also in
a child process started through ``tests/fake_cli.py``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence

from dseval.backends.base import BackendOptions, ModelBackend, OnResult
from dseval.backends.registry import register_backend
from dseval.requests import GenerateRequest, GenerateResult, LoglikelihoodRequest, LoglikelihoodResult

Scorer = Callable[[LoglikelihoodRequest], float]
#: A prompt that fails the whole generate call it is in, as a model error would.
FAIL_PROMPT = "<fake: fail>"
#: A prompt whose generate call answers only after :data:`SLOW_S`, so that callers queue behind it.
SLOW_PROMPT = "<fake: slow>"
SLOW_S = 4.0


def hashed_score(request: LoglikelihoodRequest) -> float:
    """A pseudo-random but fixed log-probability for any (context, continuation)."""
    digest = hashlib.sha256((request.context + "\x00" + request.continuation).encode()).digest()
    return -int.from_bytes(digest[:4], "little") / 2**32 * 10


def prefers(letter: str) -> Scorer:
    return lambda request: 0.0 if request.continuation.strip() == letter else -5.0


class FakeBackend(ModelBackend):
    description = "fake model for tests"

    def __init__(self, scorer: Scorer = hashed_score, delay_s: float = 0.0) -> None:
        self.scorer = scorer
        self.delay_s = delay_s
        self.calls: list[int] = []

    @classmethod
    def from_spec(cls, arg: str, options: BackendOptions) -> FakeBackend:
        # The delay comes from the environment so a slowed-down run keeps the same spec
        # (and so can be resumed by an ordinary one).
        scorer = {"hash": hashed_score, "A": prefers("A")}[arg]
        return cls(scorer, float(os.environ.get("FAKE_DELAY_S", "0")))

    @staticmethod
    def register() -> None:
        register_backend("fake", FakeBackend)

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], on_result: OnResult[LoglikelihoodResult] | None = None
    ) -> list[LoglikelihoodResult]:
        self.calls.append(len(requests))
        results = []
        for index, request in enumerate(requests):
            if self.delay_s:
                time.sleep(self.delay_s)
            result = LoglikelihoodResult(self.scorer(request), False)
            results.append(result)
            if on_result:
                on_result(index, result)
        return results

    def generate(self, requests: Sequence[GenerateRequest], on_result: OnResult[GenerateResult] | None = None) -> list[GenerateResult]:
        self.calls.append(len(requests))
        prompts = {request.prompt for request in requests}
        if FAIL_PROMPT in prompts:
            raise RuntimeError("fake failure")
        if SLOW_PROMPT in prompts:
            time.sleep(SLOW_S)
        results = []
        for index, request in enumerate(requests):
            result = GenerateResult(text=f"fake answer {hashlib.sha256(request.prompt.encode()).hexdigest()[:8]}")
            results.append(result)
            if on_result:
                on_result(index, result)
        return results
