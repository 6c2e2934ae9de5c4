"""The evaluation loop: task -> requests -> model backend -> responses -> scorer -> store.

For each task the runner builds every pending doc's requests, hands the whole list to the
backend in one call (so it can sort, share prefixes and batch), and, as each doc's last answer
arrives, scores it and appends it to samples.jsonl. Finished docs are never recomputed: a
restart with the same arguments reads them back and runs only the rest. The summary is
always computed from samples in the task's reference order, so a resumed run's summary.json
equals an uninterrupted one's.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dseval.backends.base import ModelBackend
from dseval.backends.registry import load_backend
from dseval.config import RunConfig
from dseval.data import DataSource
from dseval.distributed import Topology, barrier, share, start_processes
from dseval.errors import UserError
from dseval.finite import check_generations
from dseval.gc_policy import long_lived
from dseval.interrupts import interrupts_held
from dseval.judging import JudgedTask, judge_samples, open_judge
from dseval.metrics import Summary
from dseval.progress import Refresher, make_progress
from dseval.reasoning import strip_reasoning
from dseval.provenance import checkpoint_fingerprint, content_hash, git_commit, hardware, package_versions
from dseval.records import Doc, Sample
from dseval.requests import (
    ChatRequest,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodRollingRequest,
    Request,
)
from dseval.scoring.code_exec import CodeExecution
from dseval.store import RunStore, SampleWriter
from dseval.task import PromptContext, Task, all_tasks, get_task

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
    #: The prompts are chat-template renderings; recorded on every sample for its scorer.
    chat: bool
    #: Answers lose a leading ``<think>`` block before scoring (the raw text stays in details).
    strip_reasoning: bool = False

    def record(self, shots: int) -> dict[str, Any]:
        record = {
            "version": self.task.version,
            "shots": shots,
            "n_docs": len(self.docs),
            "prompt_hash": content_hash([[self.prompts[i], [repr(r) for r in rs]] for i, rs in enumerate(self.requests)]),
            "data_fingerprint": content_hash([[d.id, d.data, d.target] for d in self.docs]),
        }
        settings = {generation_settings(r) for rs in self.requests for r in rs if isinstance(r, GenerateRequest)}
        if settings:  # usually one; a task that varies them per doc lists each
            record["generation"] = [{k: list(v) if k == "stop" else v for k, v in s} for s in sorted(settings)]
        return record


def generation_settings(request: GenerateRequest) -> tuple[tuple[str, Any], ...]:
    """The decoding settings of a request (what run.json records per task), hashable."""
    return (("max_tokens", request.max_tokens), ("temperature", request.temperature), ("top_p", request.top_p),
            ("top_k", request.top_k), ("stop", request.stop))


def prepare(task: Task, config: RunConfig, source: DataSource, backend: ModelBackend) -> tuple[PreparedTask, int]:
    shots = config.shots_for(task.name, task.default_shots)
    ctx = PromptContext(
        shots=shots,
        chat=config.chat,
        seed=config.seed,
        samples=config.samples,
        render_chat=backend.apply_chat_template,
        record_chat=backend.recorded_chat,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        system_prompt=config.system_prompt,
    )
    docs = select_docs(task.load(source), config.limit, config.ids)
    built = [task.build(doc, ctx) for doc in docs]
    requests = [r for _, r in built]
    chat_protocol = ctx.chat or any(isinstance(r, ChatRequest) for rs in requests[:1] for r in rs)
    strip = chat_protocol if config.strip_reasoning is None else config.strip_reasoning
    return PreparedTask(task, docs, [p for p, _ in built], requests, ctx.chat, strip), shots


def new_run(config: RunConfig, records: dict[str, dict[str, Any]], fingerprint: dict[str, str] | None) -> dict[str, Any]:
    return {
        "model": config.model,
        "model_fingerprint": fingerprint,
        "config": config.identity(),
        "tasks": records,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "created": now(),
        "invocations": [],
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_resume(store: RunStore, config: RunConfig, records: dict[str, dict[str, Any]],
                 fingerprint: dict[str, str] | None = None, prepared: dict[str, PreparedTask] | None = None,
                 leader: bool = True) -> dict[str, Any]:
    """run.json for this run: new, or the existing one if it agrees with these arguments (or,
    for an extensible task, if its finished samples are docs of this run with the same prompts)."""
    existing = store.read_run()
    if existing is None:
        return new_run(config, records, fingerprint)
    before, defaults = existing.get("config", {}), RunConfig.identity_defaults()
    for name, value in config.identity().items():
        if before.get(name, defaults[name]) != value:
            raise UserError(
                f"{store.run_file} was written by a run with {name}={before.get(name, defaults[name])!r}, "
                f"not {value!r}; resume with the same arguments or choose another --out"
            )
    check_fingerprint(store, existing.get("model_fingerprint"), fingerprint)
    if fingerprint is not None:
        existing["model_fingerprint"] = fingerprint
    for task, record in records.items():
        before = existing["tasks"].get(task)
        if before is None:
            existing["tasks"][task] = record
        elif before != record and prepared is not None and prepared[task].task.extensible:
            grow_task(store, prepared[task], before, record, leader)
            existing["tasks"][task] = record
        else:
            explain_task_change(store, task, before, record)
    return existing


def grow_task(store: RunStore, prepared: PreparedTask, before: dict[str, Any], record: dict[str, Any], leader: bool) -> None:
    """Take an extensible task's folder to a larger doc set (NIAH's grid with another length):
    every finished sample must be a doc of this run whose prompt is unchanged; samples are
    re-indexed to the new reference order."""
    name, where = prepared.task.name, f"{store.run_file}: task {prepared.task.name}"
    if before.get("version") != record["version"]:
        explain_task_change(store, name, before, record)
    if before.get("generation") != record.get("generation"):
        raise UserError(f"{where}: the token limit or stop strings differ from the run in this folder; choose another --out")
    if not leader:  # the leader checks and re-indexes; torchrun stops every rank if it refuses
        return
    position = {doc.id: i for i, doc in enumerate(prepared.docs)}
    samples = store.load_samples(name, repair=True)  # a killed run's torn last line is recomputed
    for sample in samples:
        if sample.id not in position:
            raise UserError(f"{where} holds doc {sample.id}, which this run lacks: a folder's docs can grow (more "
                            f"lengths, depths or samples) but not shrink; add it back or choose another --out")
        if sample.prompt != prepared.prompts[position[sample.id]]:
            raise UserError(f"{where}: doc {sample.id}'s prompt differs from the one in this folder (another "
                            f"--haystack, chat template or prompt code); choose another --out")
        sample.index = position[sample.id]
    if samples:
        store.rewrite(name, samples)


def apply_scoring_options(tasks: Sequence[Task], strict: bool) -> None:
    """Run options that change how samples are scored (and so are part of a run's identity)."""
    for task in tasks:
        if isinstance(task, CodeExecution):
            task.strict = strict


def check_fingerprint(store: RunStore, before: dict[str, str] | None, current: dict[str, str] | None) -> None:
    """Refuse to resume with other weights under the same --model path: name the changed file."""
    if before is None or current is None or before == current:
        return
    changed = sorted(set(before) ^ set(current)) or sorted(f for f in before if before[f] != current[f])
    raise UserError(f"{store.run_file}: the model checkpoint changed since this run started ({changed[0]} differs"
                    f"{f' and {len(changed) - 1} more file(s)' if len(changed) > 1 else ''}); finished samples came "
                    f"from the old weights: restore them or choose another --out")


def explain_task_change(store: RunStore, task: str, before: dict[str, Any], record: dict[str, Any]) -> None:
    """One line saying which part of a task's identity changed, in the user's terms."""
    where = f"{store.run_file}: task {task}"
    if before.get("version") != record["version"]:
        raise UserError(f"{where} was run by task version {before.get('version')}, this is {record['version']}; "
                        f"choose another --out")
    if before.get("data_fingerprint") != record["data_fingerprint"]:
        if before.get("n_docs") != record["n_docs"]:
            raise UserError(f"{where} selected {before.get('n_docs')} docs, this run selects {record['n_docs']} "
                            f"(--limit, --ids or the data changed); "
                            f"a run folder holds one selection: choose another --out")
        raise UserError(f"{where}: the data differs from the run in this folder (another --data-dir or an edited "
                        f"file); choose another --out")
    if before.get("prompt_hash") != record["prompt_hash"]:
        raise UserError(f"{where}: the prompts or requests differ from the run in this folder (shots, chat "
                        f"template, token limits or the task's prompt code changed); choose another --out")


def task_summary(task: Task, samples: Sequence[Sample], n_total: int, limit: int | None) -> dict[str, Any]:
    """A task's summary; ``complete`` is false when docs lack a sample (a partial score), and
    ``limit`` marks a run on a subset, so neither passes for a full-set number."""
    summary: Summary = task.summarize(sorted(samples, key=lambda s: s.index))
    return {
        "metrics": finite_or_none(summary.metrics),
        "stderr": finite_or_none(summary.stderr),
        "n": summary.n,
        "headline": task.headline,
        "version": task.version,
        "complete": len(samples) >= n_total,
        "n_done": len(samples),
        "n_total": n_total,
        "limit": limit,
    }


def finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    """A metric over zero samples is undefined: null in JSON, never NaN."""
    return {k: v if math.isfinite(v) else None for k, v in values.items()}


def check_finite(doc: Doc, task: str, values: Sequence[float]) -> None:
    """A NaN or infinite log-likelihood means broken weights or numerics: stop before it is
    scored (argmax over NaN picks a choice, a plausible-looking wrong number)."""
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise UserError(f"task {task}, doc {doc.id}: the model returned a non-finite log-likelihood ({values[bad[0]]}) "
                        f"for request {bad[0]}; check the checkpoint's weights (samples written so far are kept)")


class _Collector:
    """Gathers per-request answers into finished docs and flushes scored samples to disk."""

    def __init__(self, prepared: PreparedTask, pending: list[int], writer: SampleWriter | None):
        self.prepared = prepared
        self.writer = writer
        self.owner: list[tuple[int, int]] = []  # flat request index -> (doc index, slot)
        for doc_index in pending:
            self.owner += [(doc_index, slot) for slot in range(len(prepared.requests[doc_index]))]
        self.answers: dict[int, list[Any]] = {i: [None] * len(prepared.requests[i]) for i in pending}
        #: Each request's token limit (0 for scoring requests), and the limits of those unanswered.
        self.budget = [getattr(r, "max_tokens", 0) for r in self.flat_requests()]
        self.open_budget = sum(self.budget)
        #: Tokens the answers received so far carry: generated, and prompt (where results count them).
        self.answered_tokens = 0
        self.answered_prompt_tokens = 0
        self.missing = {i: len(prepared.requests[i]) for i in pending}
        self.ready: list[Sample] = []
        self.finished: list[Sample] = []
        self.last_flush = time.monotonic()
        #: When the first doc had all its answers (timing.json's time to the first doc).
        self.first_doc_at: float | None = None

    def flat_requests(self) -> list[Request]:
        return [self.prepared.requests[d][s] for d, s in self.owner]

    def on_result(self, index: int, result: Any) -> None:
        doc_index, slot = self.owner[index]
        self.answers[doc_index][slot] = result
        self.open_budget -= self.budget[index]
        self.answered_tokens += result.num_tokens if isinstance(result, GenerateResult) else 0
        self.answered_prompt_tokens += getattr(result, "prompt_tokens", None) or 0
        self.missing[doc_index] -= 1
        if self.missing[doc_index] == 0:
            if self.first_doc_at is None:
                self.first_doc_at = time.monotonic()
            self.ready.append(self._sample(doc_index))
            if len(self.ready) >= FLUSH_DOCS or time.monotonic() - self.last_flush > FLUSH_SECONDS:
                self.flush()

    def docs_done(self, generated: int) -> float:
        """Docs answered, plus the open docs times the share of their token budget already
        generated (``generated``: tokens generated in this task so far). Generations that run
        together all finish late; counted this way the bar moves at the rate the run makes
        progress from the first step, so its ETA holds (an upper bound where answers stop
        before their token limit)."""
        open_docs = len(self.answers)
        share = 0.0
        if open_docs and self.open_budget > 0:
            share = min(1.0, max(0.0, (generated - self.answered_tokens) / self.open_budget))
        return self.answered_docs + share * open_docs

    @property
    def answered_docs(self) -> int:
        return len(self.missing) - len(self.answers)

    def _sample(self, doc_index: int) -> Sample:
        doc = self.prepared.docs[doc_index]
        answers = self.answers.pop(doc_index)
        sample = Sample(id=doc.id, index=doc_index, prompt=self.prepared.prompts[doc_index], target=doc.target,
                        fields=doc.fields, chat=self.prepared.chat)
        kind = self.prepared.requests[doc_index][0]
        if isinstance(kind, (LoglikelihoodRequest, LoglikelihoodRollingRequest)):
            check_finite(doc, self.prepared.task.name, [a.logprob for a in answers])
        if isinstance(kind, LoglikelihoodRequest):
            sample.loglikelihoods = [a.logprob for a in answers]
            sample.is_greedy = [a.is_greedy for a in answers]
        elif isinstance(kind, LoglikelihoodRollingRequest):
            sample.loglikelihoods = [a.logprob for a in answers]
            sample.details["tokens"] = sum(a.num_tokens for a in answers)
        else:
            check_generations(doc, self.prepared.task.name, [a.finish_reason for a in answers])
            sample.outputs = [a.text for a in answers]
            if self.prepared.strip_reasoning:
                stripped = [strip_reasoning(text) for text in sample.outputs]
                if stripped != sample.outputs:
                    sample.details["raw_outputs"], sample.outputs = sample.outputs, stripped
            sample.finish_reasons = [a.finish_reason for a in answers]
            sample.output_tokens = [a.num_tokens for a in answers]
        counts = [getattr(a, "prompt_tokens", None) for a in answers]
        sample.prompt_tokens = counts if any(c is not None for c in counts) else None
        return sample

    def flush(self) -> None:
        if self.ready and self.writer is None:  # a tensor-parallel peer: its replica's writer records these
            self.ready = []
        if self.ready:
            for sample, metrics in zip(self.ready, self.prepared.task.score(self.ready), strict=True):
                sample.metrics = metrics
            with interrupts_held():
                self.writer.write(self.ready)
                self.finished += self.ready
                self.ready = []
        self.last_flush = time.monotonic()


def call_backend(backend: ModelBackend, requests: list[Request], on_result: Callable[[int, Any], None]) -> None:
    """One backend call for all of a task's requests (they are of one kind)."""
    if requests and isinstance(requests[0], ChatRequest):
        backend.chat(requests, on_result)
    elif requests and isinstance(requests[0], GenerateRequest):
        backend.generate(requests, on_result)
    elif requests and isinstance(requests[0], LoglikelihoodRollingRequest):
        backend.loglikelihood_rolling(requests, on_result)
    elif requests:
        backend.loglikelihood(requests, on_result)


def run_task(prepared: PreparedTask, store: RunStore, backend: ModelBackend, topology: Topology,
             progress: Any) -> dict[str, Any]:
    """Compute this replica's share of the task's unfinished docs and record them; returns
    this replica's timing (docs, seconds, seconds to the first finished doc, the backend's
    counters: see :meth:`ModelBackend.stats`)."""
    name = prepared.task.name
    if topology.is_leader:
        store.load_samples(name, repair=True)  # drop torn lines before anyone reads
    barrier(topology)
    done_ids = {s.id for s in store.load_samples(name)}
    store.check_ids(name, {doc.id for doc in prepared.docs})
    # every replica must split the same list: none may write a sample before all have read
    barrier(topology)
    unfinished = [i for i, doc in enumerate(prepared.docs) if doc.id not in done_ids]
    pending = share(unfinished, topology)
    if topology.dp == 1:
        done_before = len(prepared.docs) - len(unfinished)
        bar = progress.add_task(name, total=len(prepared.docs), completed=done_before, docs_s=None, tok_s=None)
    else:  # rank 0 shows its own replica's share
        done_before = 0
        bar = progress.add_task(f"{name} (replica 0 of {topology.dp})", total=len(pending), docs_s=None, tok_s=None)
    writer = None
    if topology.is_writer:
        writer = store.sample_writer(name, shard=None if topology.dp == 1 else topology.dp_rank)
    collector = _Collector(prepared, pending, writer)
    requests = collector.flat_requests()
    before, start = backend.stats(), time.monotonic()

    def show() -> None:
        """The bar from the answers so far and the backend's token counters (where it keeps
        them; else the tokens the answers carry)."""
        now = backend.stats()
        generated = now["generated_tokens"] - before["generated_tokens"] if "generated_tokens" in now \
            else collector.answered_tokens
        prompt = now["prefill_tokens"] - before["prefill_tokens"] if "prefill_tokens" in now \
            else collector.answered_prompt_tokens
        elapsed = max(time.monotonic() - start, 1e-6)
        progress.update(bar, completed=done_before + collector.docs_done(generated),
                        docs_s=collector.answered_docs / elapsed, tok_s=(generated + prompt) / elapsed)

    try:
        with long_lived(), Refresher(show):  # docs, prompts and requests live for the whole task
            call_backend(backend, requests, collector.on_result)
    finally:
        collector.flush()  # whatever finished is kept, even when the backend fails
        if writer:
            writer.close()
    wall = time.monotonic() - start
    first = None if collector.first_doc_at is None else round(collector.first_doc_at - start, 3)
    grown = {k: round(v - before.get(k, 0), 3) for k, v in backend.stats().items()
             if isinstance(v, (int, float)) and k != "acceptance_rate"}
    return {"docs": len(pending), "wall_s": round(wall, 3), "first_doc_s": first,
            "docs_per_s": round(len(pending) / wall, 2) if wall > 0 else None, **grown}


def write_timing(out: str | Path, timing: dict[str, Any]) -> None:
    """``timing.json`` in the run folder: where this invocation's time went (load, each task's
    docs/s, time to its first doc and the backend's token counts and rates). Speed only, never
    part of a result; each invocation replaces it."""
    for t in timing["tasks"].values():
        for kind, tokens in (("prefill", "prefill_tokens"), ("decode", "generated_tokens")):
            secs = t.get(f"{kind}_seconds")
            if secs:
                t[f"{kind}_tok_per_s"] = round(t.get(tokens, 0) / secs, 1)
    (Path(out) / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")


def build_tasks(config: RunConfig) -> list[Task]:
    """The run's tasks with their options; a run-wide option no task declares is an error
    (a mistyped ``--task-arg`` must not be silently ignored)."""
    classes = {name: all_tasks().get(name) for name in config.tasks}
    for name, key, _ in config.task_args:
        if name == "" and not any(cls is not None and key in cls.options for cls in classes.values()):
            raise UserError(f"--task-arg {key}: none of the tasks {', '.join(config.tasks)} has that option")
    return [get_task(name, config.options_for(name, cls.options if cls else ())) for name, cls in classes.items()]


def evaluate(config: RunConfig, backend: ModelBackend | None = None, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
    """Run every task of ``config`` (resuming from ``config.out``) and write summary.json.

    Under torchrun with ``--dp`` each replica computes a share of the docs; rank 0 merges the
    shards and writes the summary. Other ranks return an empty dict. ``tasks`` passes configured
    task objects (the NIAH sweep's grid) instead of building them by name. Rank 0 holds the run
    folder's lock for the whole run, so no second run writes into it meanwhile.
    """
    topology = start_processes(config.options)
    store = RunStore(config.out)
    with store.lock() if topology.is_leader else contextlib.nullcontext():
        return _evaluate(config, store, topology, backend, tasks)


def _evaluate(config: RunConfig, store: RunStore, topology: Topology, backend: ModelBackend | None,
              tasks: Sequence[Task] | None) -> dict[str, Any]:
    started = now()
    tasks = list(tasks) if tasks is not None else build_tasks(config)
    apply_scoring_options(tasks, config.strict)
    source = DataSource(config.data_dir)
    owned = backend is None
    if owned and Path(config.model).is_dir() and (existing := store.read_run()) is not None:
        # before loading: a changed checkpoint is refused without reading its weights first
        check_fingerprint(store, existing.get("model_fingerprint"), checkpoint_fingerprint(Path(config.model)))
    loading = time.monotonic()
    backend = backend or load_backend(config.model, config.options)
    timing: dict[str, Any] = {"load_s": round(time.monotonic() - loading, 3) if owned else None, "tasks": {}}
    if owned and (phases := backend.stats().get("load_seconds")):
        timing["load_phases"] = phases  # where the load went (the engine's start-up phases)
    judge = None
    try:
        if topology.is_leader:
            judge = open_judge(config.judge, tasks, config.model, backend, config.options)
        prepared = {}
        records = {}
        for task in tasks:
            prepared[task.name], shots = prepare(task, config, source, backend)
            records[task.name] = prepared[task.name].record(shots)
        run = check_resume(store, config, records, backend.fingerprint, prepared, topology.is_leader)
        run["backend"] = backend.description
        invocation = {"argv": sys.argv, "tasks": list(prepared), "data_dir": source.describe(), "started": started,
                      "finished": None, "hardware": hardware()}
        run.setdefault("invocations", []).append(invocation)
        if topology.is_leader:
            store.write_run(run)
        summaries = {}
        with make_progress(enabled=topology.is_leader) as progress:
            for name, item in prepared.items():
                timing["tasks"][name] = run_task(item, store, backend, topology, progress)
                barrier(topology)
                if topology.is_leader:
                    samples = store.finalize(name)
                    if isinstance(item.task, JudgedTask):
                        samples = judge_samples(item.task, samples, store, judge)
                    summaries[name] = task_summary(item.task, samples, len(item.docs), config.limit)
                barrier(topology)
        invocation["backend_stats"] = backend.stats()
    finally:
        if judge is not None and judge is not backend:
            judge.close()
        if owned:
            backend.close()
    if not topology.is_leader:
        return {}
    invocation["finished"] = now()
    store.write_run(run)
    write_timing(config.out, timing)
    return store.merge_summary(config.model, summaries)


def rescore(store: RunStore, partial: bool = False) -> dict[str, Any]:
    """Recompute every sample's metrics and summary.json from samples.jsonl alone.

    A task with docs still missing is refused unless ``partial``: a summary of half the docs
    looks like a final number. With ``partial`` the summary says how many docs it covers.
    """
    with store.lock():
        run = store.read_run()
        if run is None:
            raise UserError(f"{store.run_file} not found: not a dseval run folder")
        found = {name: sorted(store.load_samples(name), key=lambda s: s.index) for name in run["tasks"]}
        totals = {name: record.get("n_docs", len(found[name])) for name, record in run["tasks"].items()}
        unfinished = [f"{name} {len(found[name])}/{totals[name]}" for name in found if len(found[name]) < totals[name]]
        if unfinished and not partial:  # refused before scoring: code execution can take long
            raise UserError(f"{store.root} is unfinished ({', '.join(unfinished)} docs have samples); resume it with "
                            f"`dseval run` or pass --partial for a summary marked partial")
        limit = run.get("config", {}).get("limit")
        # Samples written before records carried "chat" take it from the run's config (a
        # resumed run cannot mix the modes: chat is part of the run's identity).
        chat = bool(run.get("config", {}).get("chat", False))
        done = {}
        for name, samples in found.items():
            task = get_task(name)
            apply_scoring_options([task], bool(run.get("config", {}).get("strict", False)))
            for sample in samples:
                sample.chat = sample.chat or chat
            for sample, metrics in zip(samples, task.score(samples), strict=True):
                sample.metrics = metrics
            store.rewrite(name, samples)
            done[name] = task_summary(task, samples, totals[name], limit)
        return store.merge_summary(run["model"], done)
