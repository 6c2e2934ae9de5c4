"""Many callers, one model: requests that arrive together are answered in one batched call.

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

Under torchrun (``dseval serve --dp D --tp T``) the ranks form D replicas, each one copy of the
model split over its ranks (:class:`dseval.distributed.Topology`, as ``dseval run`` lays them
out). Rank 0 serves HTTP; for each group its batcher sends every rank the group cut into D
consecutive shares, each replica computes its share (all ranks of a replica make the same call,
so their collectives match), and the replicas' first ranks send their answers back to rank 0.
:func:`follow` is the loop of every other rank. While idle the batcher sends a keep-alive, so
that the other ranks' wait for the next call never reaches the process group's timeout.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from dseval.backends.base import LiveGeneration, ModelBackend
from dseval.distributed import Topology, consecutive_shares, from_leader, to_leader
from dseval.errors import UserError

#: What the batcher can ask of a backend: the backend methods, each taking a whole list (but
#: ``prompt_logprobs``: one prompt and the completion generated after it).
_KINDS = ("generate", "chat", "loglikelihood", "prompt_logprobs")
#: The kinds a live backend generates continuously.
_LIVE_KINDS = ("generate", "chat")
#: Seconds a replicated batcher may sit idle before it tells the other ranks it is alive.
KEEPALIVE_S = 60.0
_KEEPALIVE = "keepalive"
#: An answer not (yet) delivered; results are never this object.
_MISSING = object()


class ReplicaError(RuntimeError):
    """A backend failure on another replica, sent to rank 0 by type name and message: the
    exception itself may not survive pickling, and rank 0 only needs to tell the caller."""


@dataclass
class _Job:
    kind: str
    request: Any
    future: Future = field(default_factory=Future)
    #: Called with each piece of generated text as it decodes (live backends only).
    on_text: Callable[[str], None] | None = None


@dataclass
class ReplicaCounts:
    """What one replica has been asked, for ``/health``: the backend requests (one per prompt
    and choice) in its shares, and how many of them failed."""

    ranks: list[int]
    requests: int = 0
    failed: int = 0


def answer(backend: ModelBackend, kind: str, requests: Sequence[Any],
           on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Each request's result, or the exception that failed it. A list kind is one backend call:
    if it fails, the results its callback delivered stand and the rest get the error;
    ``prompt_logprobs`` is one call per request (each a whole-prompt forward), so a failing one
    fails only itself. An empty share makes no call."""
    answers: list[Any] = [_MISSING] * len(requests)

    def deliver(index: int, result: Any) -> None:
        answers[index] = result
        if on_result is not None:
            on_result(index, result)

    if kind == "prompt_logprobs":
        for index, request in enumerate(requests):
            try:
                deliver(index, backend.prompt_logprobs(*request))
            except Exception as err:  # noqa: BLE001 - this caller's answer
                answers[index] = err
        return answers
    if not requests:
        return []
    try:
        return list(getattr(backend, kind)(list(requests), deliver))
    except Exception as err:  # noqa: BLE001 - the answer of every caller still waiting
        return [err if a is _MISSING else a for a in answers]


class Batcher:
    """Runs every backend call on one worker thread (backends are not thread-safe)."""

    def __init__(self, backend: ModelBackend, topology: Topology | None = None) -> None:
        self.backend = backend
        self.topology = topology or Topology()
        #: Other ranks hold the model too (shards of it, or replicas): each call goes to them first.
        self.replicated = self.topology.world_size > 1
        size = self.topology.model_size
        self.replicas = [ReplicaCounts(list(range(r * size, (r + 1) * size))) for r in range(self.topology.dp)]
        #: Continuous generation, where the backend has it (never across ranks: the other ranks
        #: replay whole backend calls, not steps).
        self.live = None if self.replicated else backend.live()
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
                except BaseException as err:  # a failed step drops every live request: each caller is told
                    self.replicas[0].failed += len(running)
                    for future in running:
                        future.set_exception(err)
                    running.clear()
                    if not isinstance(err, Exception):
                        raise

    def _admit(self, live: LiveGeneration, job: _Job, running: dict[Future, object]) -> None:
        """Start ``job`` in the live backend; a request it refuses is answered alone."""
        def done(result: Any) -> None:
            running.pop(job.future, None)
            job.future.set_result(result)

        self.replicas[0].requests += 1  # /health counts live requests as the batched ones
        try:
            running[job.future] = live.add(job.request, done, job.on_text)
        except Exception as err:  # noqa: BLE001 - the caller's bad request
            self.replicas[0].failed += 1
            job.future.set_exception(err)

    def _run(self, jobs: Sequence[_Job]) -> None:
        for kind in dict.fromkeys(job.kind for job in jobs):
            group = [job for job in jobs if job.kind == kind]
            try:
                answers = self._answer(kind, [job.request for job in group], group)
            except BaseException as err:  # a lost rank, or an interrupt: every waiting caller is told
                answers = [err] * len(group)
                if not isinstance(err, Exception):
                    _settle(group, answers)
                    raise
            _settle(group, answers)

    def _answer(self, kind: str, requests: list[Any], group: Sequence[_Job]) -> list[Any]:
        """Every request's answer: computed here, or (replicated) a share per replica, rank 0's
        own share settling its callers as each result arrives."""
        def early(index: int, result: Any) -> None:
            if not group[index].future.done():
                group[index].future.set_result(result)

        shares = [requests[s.start:s.stop] for s in consecutive_shares(len(requests), self.topology.dp)]
        for counts, share in zip(self.replicas, shares):  # counted as the calls start: /health shows work in flight
            counts.requests += len(share)
        if self.replicated:
            from_leader((kind, shares))
        mine = answer(self.backend, kind, shares[0], early)
        gathered = to_leader(mine) if self.replicated else [mine]
        answers = []
        for counts, replica in zip(self.replicas, range(0, self.topology.world_size, self.topology.model_size)):
            got = mine if replica == 0 else gathered[replica]
            counts.failed += sum(isinstance(a, BaseException) for a in got)
            answers.extend(got)
        return answers


def _settle(group: Sequence[_Job], answers: Sequence[Any]) -> None:
    """Resolve every future still open with its answer: a result, or the exception the server
    answers that caller with."""
    for job, result in zip(group, answers):
        if job.future.done():
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)


def _portable(err: BaseException, topology: Topology) -> Exception:
    """``err`` as another rank sends it to rank 0: a bad request stays a :class:`UserError`
    (the server answers 4xx), anything else becomes a :class:`ReplicaError` naming the replica."""
    if isinstance(err, UserError):
        return UserError(str(err), err.exit_code)
    return ReplicaError(f"replica {topology.dp_rank} failed: {type(err).__name__}: {err}")


def follow(backend: ModelBackend, topology: Topology) -> None:
    """The loop of every rank but 0 under ``dseval serve`` with torchrun: compute its replica's
    share of each call rank 0's batcher makes, in the same order, until it closes; the replica's
    first rank sends the answers back (a failure among them is the affected callers' answer)."""
    while (call := from_leader(None)) is not None:
        kind, shares = call
        if kind == _KEEPALIVE:
            continue
        answers = answer(backend, kind, shares[topology.dp_rank])
        mine = [_portable(a, topology) if isinstance(a, BaseException) else a for a in answers]
        to_leader(mine if topology.is_writer else None)
