"""Many callers, one backend: requests that arrive together are answered in one batched call.

``dseval serve`` handles each HTTP request on its own, but a model backend is fastest when it
gets whole lists (the engine batches them continuously and shares prefixes). The batcher owns
the backend on one thread: it takes every request waiting in its queue, groups them by kind,
hands each group to the backend in one call, and resolves each caller's future as its answer
arrives. A request that arrives while a batch is running joins the next batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from dseval.backends.base import ModelBackend

#: What the batcher can ask of a backend: kind -> the backend method that takes a whole list.
_KINDS: dict[str, Callable[[ModelBackend], Callable[..., list[Any]]]] = {
    "generate": lambda backend: backend.generate,
    "chat": lambda backend: backend.chat,
    "loglikelihood": lambda backend: backend.loglikelihood,
}


@dataclass
class _Job:
    kind: str
    request: Any
    future: Future = field(default_factory=Future)


class Batcher:
    """Runs every backend call on one worker thread (backends are not thread-safe)."""

    def __init__(self, backend: ModelBackend) -> None:
        self.backend = backend
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="dseval-batcher", daemon=True)
        self._thread.start()

    def submit(self, kind: str, request: Any) -> Future:
        """Queue one request; the future holds its result or the backend's exception.
        ``kind`` is "generate", "chat", "loglikelihood", or "prompt_logprobs" (request: the prompt and
        the completion generated after it)."""
        if kind not in _KINDS and kind != "prompt_logprobs":
            raise ValueError(f"unknown request kind {kind!r}")
        job = _Job(kind, request)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while True:  # everything already waiting joins this batch
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._run(jobs)
                    return
                jobs.append(job)
            self._run(jobs)

    def _run(self, jobs: Sequence[_Job]) -> None:
        for kind in dict.fromkeys(job.kind for job in jobs):
            group = [job for job in jobs if job.kind == kind]
            if kind == "prompt_logprobs":  # one prompt per call: each is a whole-prompt forward
                for job in group:
                    self._settle([job], lambda: [self.backend.prompt_logprobs(*job.request)])
                continue
            call = _KINDS[kind](self.backend)
            self._settle(group, lambda: call([job.request for job in group],
                                             lambda i, result: group[i].future.set_result(result)))

    @staticmethod
    def _settle(group: Sequence[_Job], call: Callable[[], list[Any]]) -> None:
        """Run ``call``; results it returns settle futures its callback did not, and an
        exception fails every future still open (the server answers those callers with it)."""
        try:
            results = call()
        except BaseException as err:  # noqa: BLE001 - handed to every waiting caller
            for job in group:
                if not job.future.done():
                    job.future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        for job, result in zip(group, results):
            if not job.future.done():
                job.future.set_result(result)
