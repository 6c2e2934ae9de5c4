"""The evaluation loop: task -> requests -> model backend -> responses -> scorer -> store.

For each task the runner builds every pending doc's requests, hands the whole list to the
backend in one call (so it can sort, share prefixes and batch), and, as each doc's last answer
arrives, scores it and appends it to samples.jsonl. Finished docs are never recomputed: a
restart with the same arguments reads them back and runs only the rest. The summary is
always computed from samples in the task's reference order, so a resumed run's summary.json
equals an uninterrupted one's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from dseval.backends.base import ModelBackend, load_backend
from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.distributed import Topology, barrier, init_process_group, share
from dseval.errors import UserError
from dseval.metrics import Summary
from dseval.progress import make_progress
from dseval.provenance import content_hash, git_commit, package_versions
from dseval.requests import ChatRequest, GenerateRequest, LoglikelihoodRequest
from dseval.store import RunStore, SampleWriter
from dseval.tasks.base import Doc, PromptContext, Request, Sample, Task, get_task

#: Scored samples are written at least this often, so a kill loses little finished work
#: while scorers that batch (code execution) still get batches.
FLUSH_SECONDS = 2.0
FLUSH_DOCS = 64


def select_docs(docs: list[Doc], limit: int | None, ids: Sequence[str] | None) -> list[Doc]:
    """``--ids`` keeps the named docs; ``--limit N`` keeps the first N of each group (each MMLU
    subject, as lm-evaluation-harness limits each subtask)."""
    if ids:
        known = {doc.id for doc in docs}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise UserError(f"unknown id(s) for this task: {', '.join(unknown[:5])}")
        wanted = set(ids)
        docs = [doc for doc in docs if doc.id in wanted]
    if limit is not None:
        taken: dict[str, int] = {}
        kept = []
        for doc in docs:
            if taken.get(doc.group, 0) < limit:
                taken[doc.group] = taken.get(doc.group, 0) + 1
                kept.append(doc)
        docs = kept
    return docs


@dataclass
class PreparedTask:
    """A task with its selected docs and their prompts and requests, built once."""

    task: Task
    docs: list[Doc]
    prompts: list[str]
    requests: list[list[Request]]

    def record(self, shots: int) -> dict[str, Any]:
        return {
            "version": self.task.version,
            "shots": shots,
            "n_docs": len(self.docs),
            "prompt_hash": content_hash([[self.prompts[i], [repr(r) for r in rs]] for i, rs in enumerate(self.requests)]),
            "data_fingerprint": content_hash([[d.id, d.data, d.target] for d in self.docs]),
        }


def prepare(task: Task, config: RunConfig, source: DataSource, backend: ModelBackend) -> tuple[PreparedTask, int]:
    shots = task.default_shots if config.shots is None else config.shots
    ctx = PromptContext(
        shots=shots,
        chat=config.chat,
        seed=config.seed,
        samples=config.samples,
        render_chat=backend.apply_chat_template,
        max_tokens=config.max_tokens,
    )
    docs = select_docs(task.load(source), config.limit, config.ids)
    built = [task.build(doc, ctx) for doc in docs]
    return PreparedTask(task, docs, [p for p, _ in built], [r for _, r in built]), shots


def check_resume(store: RunStore, config: RunConfig, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """run.json for this run: new, or the existing one if it agrees with these arguments."""
    existing = store.read_run()
    if existing is None:
        return {
            "model": config.model,
            "config": config.identity(),
            "tasks": records,
            "packages": package_versions(),
            "git_commit": git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    before, defaults = existing.get("config", {}), RunConfig.identity_defaults()
    for name, value in config.identity().items():
        if before.get(name, defaults[name]) != value:
            raise UserError(
                f"{store.run_file} was written by a run with {name}={before.get(name, defaults[name])!r}, "
                f"not {value!r}; resume with the same arguments or choose another --out"
            )
    for task, record in records.items():
        before = existing["tasks"].get(task)
        if before is None:
            existing["tasks"][task] = record
            continue
        for key in ("version", "prompt_hash", "data_fingerprint"):
            if before[key] != record[key]:
                raise UserError(f"{store.run_file}: task {task} has a different {key} than this run; choose another --out")
    return existing


def task_summary(task: Task, samples: Sequence[Sample]) -> dict[str, Any]:
    summary: Summary = task.summarize(sorted(samples, key=lambda s: s.index))
    return {
        "metrics": summary.metrics,
        "stderr": summary.stderr,
        "n": summary.n,
        "headline": task.headline,
        "version": task.version,
    }


class _Collector:
    """Gathers per-request answers into finished docs and flushes scored samples to disk."""

    def __init__(self, prepared: PreparedTask, pending: list[int], writer: SampleWriter | None, advance: Callable[[int], None]):
        self.prepared = prepared
        self.writer = writer
        self.advance = advance
        self.owner: list[tuple[int, int]] = []  # flat request index -> (doc index, slot)
        for doc_index in pending:
            self.owner += [(doc_index, slot) for slot in range(len(prepared.requests[doc_index]))]
        self.answers: dict[int, list[Any]] = {i: [None] * len(prepared.requests[i]) for i in pending}
        self.missing = {i: len(prepared.requests[i]) for i in pending}
        self.ready: list[Sample] = []
        self.finished: list[Sample] = []
        self.last_flush = time.monotonic()

    def flat_requests(self) -> list[Request]:
        return [self.prepared.requests[d][s] for d, s in self.owner]

    def on_result(self, index: int, result: Any) -> None:
        doc_index, slot = self.owner[index]
        self.answers[doc_index][slot] = result
        self.missing[doc_index] -= 1
        if self.missing[doc_index] == 0:
            self.ready.append(self._sample(doc_index))
            if len(self.ready) >= FLUSH_DOCS or time.monotonic() - self.last_flush > FLUSH_SECONDS:
                self.flush()

    def _sample(self, doc_index: int) -> Sample:
        doc = self.prepared.docs[doc_index]
        answers = self.answers.pop(doc_index)
        sample = Sample(id=doc.id, index=doc_index, prompt=self.prepared.prompts[doc_index], target=doc.target, fields=doc.fields)
        if isinstance(self.prepared.requests[doc_index][0], LoglikelihoodRequest):
            sample.loglikelihoods = [a.logprob for a in answers]
            sample.is_greedy = [a.is_greedy for a in answers]
        else:
            sample.outputs = [a.text for a in answers]
        return sample

    def flush(self) -> None:
        if self.ready and self.writer is None:  # a tensor-parallel peer: its replica's writer records these
            self.ready = []
        if self.ready:
            for sample, metrics in zip(self.ready, self.prepared.task.score(self.ready), strict=True):
                sample.metrics = metrics
            self.writer.write(self.ready)
            self.advance(len(self.ready))
            self.finished += self.ready
            self.ready = []
        self.last_flush = time.monotonic()


def run_task(prepared: PreparedTask, store: RunStore, backend: ModelBackend, topology: Topology, progress: Any) -> None:
    """Compute this replica's share of the task's unfinished docs and record them."""
    name = prepared.task.name
    if topology.is_leader:
        store.load_samples(name, repair=True)  # drop torn lines before anyone reads
    barrier(topology)
    done_ids = {s.id for s in store.load_samples(name)}
    # every replica must split the same list: none may write a sample before all have read
    barrier(topology)
    unfinished = [i for i, doc in enumerate(prepared.docs) if doc.id not in done_ids]
    pending = share(unfinished, topology)
    if topology.dp == 1:
        bar = progress.add_task(name, total=len(prepared.docs), completed=len(prepared.docs) - len(unfinished))
    else:  # rank 0 shows its own replica's share
        bar = progress.add_task(f"{name} (replica 0 of {topology.dp})", total=len(pending))
    writer = None
    if topology.is_writer:
        writer = store.sample_writer(name, shard=None if topology.dp == 1 else topology.dp_rank)
    collector = _Collector(prepared, pending, writer, lambda n: progress.advance(bar, n))
    requests = collector.flat_requests()
    try:
        if requests and isinstance(requests[0], ChatRequest):
            backend.chat(requests, collector.on_result)
        elif requests and isinstance(requests[0], GenerateRequest):
            backend.generate(requests, collector.on_result)
        elif requests:
            backend.loglikelihood(requests, collector.on_result)
    finally:
        collector.flush()  # whatever finished is kept, even when the backend fails
        if writer:
            writer.close()


def evaluate(config: RunConfig, backend: ModelBackend | None = None, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
    """Run every task of ``config`` (resuming from ``config.out``) and write summary.json.

    Under torchrun with ``--dp`` each replica computes a share of the docs; rank 0 merges the
    shards and writes the summary. Other ranks return an empty dict. ``tasks`` passes configured
    task objects (the NIAH sweep's grid) instead of building them by name.
    """
    topology = Topology.from_env(config.dp, config.tp, config.ep)
    init_process_group(topology)
    store = RunStore(config.out)
    tasks = list(tasks) if tasks is not None else [get_task(name) for name in config.tasks]
    source = DataSource(config.data_dir)
    owned = backend is None
    backend = backend or load_backend(config.model, config.backend_options())
    try:
        prepared = {}
        records = {}
        for task in tasks:
            prepared[task.name], shots = prepare(task, config, source, backend)
            records[task.name] = prepared[task.name].record(shots)
        run = check_resume(store, config, records)
        run["backend"] = backend.description
        if topology.is_leader:
            store.write_run(run)
        summaries = {}
        with make_progress(enabled=topology.is_leader) as progress:
            for name, item in prepared.items():
                run_task(item, store, backend, topology, progress)
                barrier(topology)
                if topology.is_leader:
                    samples = store.finalize(name)
                    if len(samples) != len(item.docs):  # never summarize a partial task as if whole
                        raise RuntimeError(f"{name}: {len(item.docs) - len(samples)} of {len(item.docs)} docs have no "
                                           f"sample after the run; run again with the same --out to compute them")
                    summaries[name] = task_summary(item.task, samples)
                barrier(topology)
    finally:
        if owned:
            backend.close()
    if not topology.is_leader:
        return {}
    summary = {"model": config.model, "tasks": summaries}
    store.write_summary(summary)
    return summary


def rescore(store: RunStore) -> dict[str, Any]:
    """Recompute every sample's metrics and summary.json from samples.jsonl alone."""
    run = store.read_run()
    if run is None:
        raise UserError(f"{store.run_file} not found: not a dseval run folder")
    summaries = {}
    for name in run["tasks"]:
        task = get_task(name)
        samples = sorted(store.load_samples(name), key=lambda s: s.index)
        for sample, metrics in zip(samples, task.score(samples), strict=True):
            sample.metrics = metrics
        store.rewrite(name, samples)
        summaries[name] = task_summary(task, samples)
    summary = {"model": run["model"], "tasks": summaries}
    store.write_summary(summary)
    return summary
