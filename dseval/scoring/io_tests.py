"""A test driver for competitive-programming solutions, run *inside* the sandbox.

LiveCodeBench (and any task in its release format) checks a solution two ways: ``stdin``
tests feed the input to the whole program and compare what it prints, ``functional`` tests
call ``Solution().<fn_name>(*args)`` with one JSON value per input line. The comparison rules
are LiveCodeBench's: printed output matches when, after stripping, it has the same lines and
each line is equal or equal as a list of decimals; a returned tuple counts as a list. Each
test gets its own time limit (an alarm; the sandbox's limits still bound the whole run).

This file is plain standard-library Python: :func:`program` returns its own source followed
by a call to :func:`main`, and that text is what the sandbox runs, so the checking code never
runs in the harness process. The process exits 0 when every test passes; otherwise it raises
an AssertionError naming the first failing test and why (wrong answer or time limit).
"""

from __future__ import annotations

import io
import json
import signal
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

#: Imports LeetCode-style solutions take for granted (``List``, ``defaultdict``, ``inf``...),
#: the set LiveCodeBench puts before every solution.
PRELUDE = "".join(f"from {m} import *\n" for m in (
    "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random", "statistics",
    "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")) + "".join(
    f"import {m}\n" for m in ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math",
                              "random", "statistics", "itertools", "functools", "operator", "io", "sys", "json")
) + "sys.setrecursionlimit(50000)\n"  # fmt: skip
#: Seconds per test (LiveCodeBench's default).
TEST_TIMEOUT_S = 6


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(x) for x in line.split()]
    except InvalidOperation:
        return None


def same_printed_output(got: str, expected: str) -> bool:
    a, b = _lines(got), _lines(expected)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x != y and (_decimals(x) is None or _decimals(x) != _decimals(y)):
            return False
    return True


def _run_stdin(code: Any, text: str) -> str:
    """What the program prints for ``text`` on stdin; real byte streams underneath, since fast
    solutions read ``sys.stdin.buffer`` and write ``sys.stdout.buffer``."""
    stdin, stdout = sys.stdin, sys.stdout
    captured = io.BytesIO()
    fake_in = io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8")
    fake_out = io.TextIOWrapper(captured, encoding="utf-8", write_through=True)
    sys.stdin, sys.stdout = fake_in, fake_out
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit:
        pass
    finally:
        sys.stdin, sys.stdout = stdin, stdout
        fake_out.flush()
        printed = captured.getvalue()  # before the wrapper is collected and closes the buffer
    return printed.decode("utf-8", errors="replace")


def main(solution: str, tests: list[dict[str, str]], fn_name: str | None) -> None:
    signal.signal(signal.SIGALRM, _alarm)
    for number, test in enumerate(tests, 1):
        signal.alarm(TEST_TIMEOUT_S)
        try:
            if test["testtype"] == "functional":
                namespace: dict[str, Any] = {"__name__": "solution"}
                exec(compile(PRELUDE + solution, "<solution>", "exec"), namespace)
                args = [json.loads(line) for line in test["input"].split("\n")]
                got = getattr(namespace["Solution"](), fn_name or "")(*args)
                ok = (list(got) if isinstance(got, tuple) else got) == json.loads(test["output"])
            else:
                ok = same_printed_output(_run_stdin(compile(solution, "<solution>", "exec"), test["input"]), test["output"])
        except _Timeout:
            raise AssertionError(f"test {number}: time limit ({TEST_TIMEOUT_S} s) exceeded") from None
        finally:
            signal.alarm(0)
        if not ok:
            raise AssertionError(f"test {number} ({test['testtype']}): wrong answer")


def program(solution: str, tests: list[dict[str, str]], fn_name: str | None) -> str:
    """The sandbox program: this module's source, then the call that checks ``solution``."""
    return Path(__file__).read_text(encoding="utf-8") + f"\n\nmain({solution!r}, json.loads({json.dumps(tests)!r}), {fn_name!r})\n"
