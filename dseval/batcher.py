"""Many callers, one backend: requests that arrive together are answered in one batched call.

``dseval serve`` handles each HTTP request on its own, but a model backend is fastest when it
gets whole lists (the engine batches them continuously and shares prefixes). The batcher owns
the backend on one thread: it takes every request waiting in its queue, groups them by kind,
hands each group to the backend in one call, and resolves each caller's future as its answer
arrives. A request that arrives while a batch is running joins the next batch.

A model split over ranks (``torchrun ... dseval serve --tp N``/``--ep N``) needs every rank to run
the same model steps: rank 0 serves HTTP and its batcher sends each backend call to the other
ranks before making it (:func:`follow` is their loop), and a keep-alive while idle, so that
their wait for the next call never reaches the process group's timeout.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from dseval.backends.base import ModelBackend
from dseval.distributed import from_leader

#: What the batcher can ask of a backend: the backend methods, each taking a whole list (but
#: ``prompt_logprobs``: one prompt and the completion generated after it).
_KINDS = ("generate", "chat", "loglikelihood", "prompt_logprobs")
#: Seconds a replicated batcher may sit idle before it tells the other ranks it is alive.
KEEPALIVE_S = 60.0
_KEEPALIVE = "keepalive"


@dataclass
class _Job:
    kind: str
    request: Any
    future: Future = field(default_factory=Future)


class Batcher:
    """Runs every backend call on one worker thread (backends are not thread-safe)."""

    def __init__(self, backend: ModelBackend, replicated: bool = False) -> None:
        self.backend = backend
        #: Other ranks hold shards of the model: each call is sent to them first.
        self.replicated = replicated
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="dseval-batcher", daemon=True)
        self._thread.start()

    def submit(self, kind: str, request: Any) -> Future:
        """Queue one request; the future holds its result or the backend's exception.
        ``kind`` is "generate", "chat", "loglikelihood", or "prompt_logprobs" (request: the prompt and
        the completion generated after it)."""
        if kind not in _KINDS:
            raise ValueError(f"unknown request kind {kind!r}")
        job = _Job(kind, request)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            if self.replicated:
                from_leader(None)  # the other ranks stop following

    def _serve(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=KEEPALIVE_S if self.replicated else None)
            except queue.Empty:
                from_leader((_KEEPALIVE, ()))
                continue
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
                    self._settle([job], lambda: [self._call("prompt_logprobs", *job.request)])
                continue
            self._settle(group, lambda: self._call(kind, [job.request for job in group],
                                                   on_result=lambda i, result: group[i].future.set_result(result)))

    def _call(self, kind: str, *args: Any, on_result: Callable[[int, Any], None] | None = None) -> Any:
        """The backend's method for ``kind`` on ``args``, sent to the other ranks first when the
        model is split over them (they run it without the callback, which only rank 0 has)."""
        if self.replicated:
            from_leader((kind, args))
        method = getattr(self.backend, kind)
        return method(*args) if on_result is None else method(*args, on_result)

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


def follow(backend: ModelBackend) -> None:
    """The loop of every rank but 0 under a split-model ``dseval serve``: make each backend call
    rank 0's batcher makes, in the same order, until it closes. A call that fails here fails on
    rank 0 too, which answers the client, so the error is not raised again."""
    while (call := from_leader(None)) is not None:
        kind, args = call
        if kind != _KEEPALIVE:
            try:
                getattr(backend, kind)(*args)
            except Exception:  # noqa: BLE001 - rank 0 reports it
                pass
