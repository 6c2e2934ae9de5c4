"""Many callers, one backend: requests that arrive together are answered in one batched call.

``dseval serve`` handles each HTTP request on its own, but a model backend is fastest when it
gets whole lists (the engine batches them continuously and shares prefixes). The batcher owns
the backend on one thread: it takes every request waiting in its queue, groups them by kind,
hands each group to the backend in one call, and resolves each caller's future as its answer
arrives. A request that arrives while a batch is running joins the next batch.

A backend that can generate continuously (:meth:`ModelBackend.live`: the built-in engine on one
process) is driven step by step instead: generation requests join the running ones between
model steps, hand their text out piece by piece (``on_text``), and leave when their caller is
gone (:meth:`Batcher.abort`). Scoring requests (loglikelihood, prompt log-probabilities) still
run as whole batched calls: once one is queued, new generation requests wait, the running ones
finish, the scoring batch runs, then the waiting generation is admitted; so neither kind can
starve the other.

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

from dseval.backends.base import LiveGeneration, ModelBackend
from dseval.distributed import from_leader

#: What the batcher can ask of a backend: the backend methods, each taking a whole list (but
#: ``prompt_logprobs``: one prompt and the completion generated after it).
_KINDS = ("generate", "chat", "loglikelihood", "prompt_logprobs")
#: The kinds a live backend generates continuously.
_LIVE_KINDS = ("generate", "chat")
#: Seconds a replicated batcher may sit idle before it tells the other ranks it is alive.
KEEPALIVE_S = 60.0
_KEEPALIVE = "keepalive"


@dataclass
class _Job:
    kind: str
    request: Any
    future: Future = field(default_factory=Future)
    #: Called with each piece of generated text as it decodes (live backends only).
    on_text: Callable[[str], None] | None = None


class Batcher:
    """Runs every backend call on one worker thread (backends are not thread-safe)."""

    def __init__(self, backend: ModelBackend, replicated: bool = False) -> None:
        self.backend = backend
        #: Other ranks hold shards of the model: each call is sent to them first.
        self.replicated = replicated
        #: Continuous generation, where the backend has it (never across ranks: :func:`follow`
        #: replays whole backend calls, not steps).
        self.live = None if replicated else backend.live()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="dseval-batcher", daemon=True)
        self._thread.start()

    def submit(self, kind: str, request: Any, on_text: Callable[[str], None] | None = None) -> Future:
        """Queue one request; the future holds its result or the backend's exception.
        ``kind`` is "generate", "chat", "loglikelihood", or "prompt_logprobs" (request: the prompt and
        the completion generated after it). A live backend calls ``on_text`` (on the batcher's
        thread) with each piece of a generation's text before the future resolves; other
        backends never call it."""
        if kind not in _KINDS:
            raise ValueError(f"unknown request kind {kind!r}")
        job = _Job(kind, request, on_text=on_text)
        self._queue.put(job)
        return job.future

    def abort(self, future: Future) -> None:
        """The caller of ``future`` is gone: a live backend drops its request (freeing its
        cache) and cancels the future; a batched call runs to its end anyway."""
        if self.live is not None:
            self._queue.put(_Job("abort", future))

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
        if self.live is not None:
            self._serve_live(self.live)
            return
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

    def _take(self, block: bool) -> list[_Job | None]:
        """Every job waiting in the queue, after waiting for the first one if ``block``."""
        jobs: list[_Job | None] = [self._queue.get()] if block else []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return jobs

    def _serve_live(self, live: LiveGeneration) -> None:
        """Admit, abort and step until closed (see the module docstring)."""
        running: dict[Future, object] = {}  # live handle of each admitted job
        held: list[_Job] = []  # scoring jobs and the generation queued after them
        while True:
            for job in self._take(block=not held and not live.busy()):
                if job is None:  # closing: nobody waits for the rest
                    for future, handle in running.items():
                        live.abort(handle)
                        future.cancel()
                    return
                if job.kind == "abort":
                    if (handle := running.pop(job.request, None)) is not None:
                        live.abort(handle)
                    held = [j for j in held if j.future is not job.request]
                    job.request.cancel()
                elif job.kind in _LIVE_KINDS and not held:
                    self._admit(live, job, running)
                else:
                    held.append(job)
            if held and not live.busy():  # drained: the scoring batch, then the generation held behind it
                self._run([j for j in held if j.kind not in _LIVE_KINDS])
                for job in [j for j in held if j.kind in _LIVE_KINDS]:
                    self._admit(live, job, running)
                held = []
            if live.busy():
                try:
                    live.step()
                except BaseException as err:  # noqa: BLE001 - handed to every waiting caller
                    for future in running:
                        future.set_exception(err)
                    running.clear()
                    if not isinstance(err, Exception):
                        raise

    @staticmethod
    def _admit(live: LiveGeneration, job: _Job, running: dict[Future, object]) -> None:
        def done(result: Any) -> None:
            running.pop(job.future, None)
            job.future.set_result(result)

        try:
            running[job.future] = live.add(job.request, done, job.on_text)
        except Exception as err:  # noqa: BLE001 - the caller's bad request, answered to it alone
            job.future.set_exception(err)

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
