"""Checks written for this harness, run in the sandbox's checker process (LiveCodeBench, CRUXEval).

The sandbox runs a program in one process and its tests in another, the checker, which reaches
the program only through a link that carries questions out and plain data back
(``dseval.sandbox._child.runner`` and ``remote``). This module is the checker's half for the
tasks whose official checkers compare values or printouts: :func:`dseval.scoring.code_exec.checked_job`
sends its source as a job's tests, followed by one call of a ``check_*`` function, with the
program's globals as the dict ``program`` (``Job.shared_globals=False``: no name the program
defines can stand in for a built-in or a helper used here). The expected values exist only in
that call's arguments, so only in the checker; the comparisons run here, with this process's
own ``==`` on values decoded into exact built-in types.

What crosses from the program as a value (``remote.encode``): ``None``, ``bool``, ``int``,
``float``, ``complex``, ``str``, ``bytes``, ``bytearray``, ``list``, ``tuple``, ``set``,
``frozenset``, ``dict``, ``range``, ``collections`` ``deque``/``Counter``/``OrderedDict``/
``defaultdict``, ``Fraction``, ``Decimal``, built-in functions and types by name, nested freely;
numpy scalars and subclasses of the built-in types arrive as their plain value. These are
the types the official checkers' expected values are made of, so ``==`` here answers as it
answers there on every honest value. Anything else (an instance of the program's class, an
object whose ``__eq__`` is always True, a generator) stays in the program's process as a
handle, compares equal to nothing but itself, fails, and is noted as tampering when compared.

:func:`stdin_runner` is the one piece that runs in the program's process: the source of this
module is also the head of a LiveCodeBench stdin program, which only ever sees each test's input.
The file is plain standard-library Python for that reason: neither process can import dseval.
"""

from __future__ import annotations

import io
import json
import _signal as signal  # the C module: `signal` would import enum in every checker
import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

#: Seconds per LiveCodeBench test (the official default), measured in the checker.
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
    """LiveCodeBench's ``grade_stdio`` rule: after stripping, the same lines, each equal as text
    or as a list of decimals ("1.5" matches "1.50")."""
    a, b = _lines(got), _lines(expected)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x != y and (_decimals(x) is None or _decimals(x) != _decimals(y)):
            return False
    return True


def stdin_runner(solution: str) -> Callable[[str], str]:
    """In the program's process: a function that runs ``solution`` as ``__main__`` with one test's
    input as stdin and returns what it printed. Real byte streams underneath, since fast
    solutions read ``sys.stdin.buffer`` and write ``sys.stdout.buffer``; compiled once, so a
    solution that does not compile fails the program before any test."""
    code = compile(solution, "<solution>", "exec")

    def run(text: str) -> str:
        stdin, stdout = sys.stdin, sys.stdout
        captured = io.BytesIO()
        fake_in = io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8")
        fake_out = io.TextIOWrapper(captured, encoding="utf-8", write_through=True)
        sys.stdin, sys.stdout = fake_in, fake_out
        try:
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 - the program's own code
        except SystemExit:
            pass
        finally:
            sys.stdin, sys.stdout = stdin, stdout
            fake_out.flush()
            printed = captured.getvalue()  # before the wrapper is collected and closes the buffer
        return printed.decode("utf-8", errors="replace")

    return run


def _in_time(number: int, ask: Callable[..., Any], *args: Any) -> Any:
    """``ask(*args)`` (a question to the program) under the per-test alarm."""
    signal.alarm(TEST_TIMEOUT_S)
    try:
        return ask(*args)
    except _Timeout:
        raise AssertionError(f"test {number}: time limit ({TEST_TIMEOUT_S} s) exceeded") from None
    finally:
        signal.alarm(0)


def check_io_tests(program: dict, tests: list[dict[str, str]], fn_name: str | None, solution_class: bool) -> None:
    """LiveCodeBench's grader, test by test; raises AssertionError naming the first failing test.

    ``stdin`` tests ask the program's ``run_stdin`` (:func:`stdin_runner`) for the printout of
    one input. ``functional`` tests call ``fn_name`` with the JSON values of the input's lines: a
    method of one ``Solution()`` made for all tests when ``solution_class`` (the official
    ``compile_code`` makes one when the code says ``class Solution``), else the program's
    function; the returned value, a tuple read as a list, must equal the expected JSON value.
    """
    signal.signal(signal.SIGALRM, _alarm)
    method = None
    for number, test in enumerate(tests, 1):
        if test["testtype"] == "functional":
            if method is None:
                owner = _in_time(number, program["Solution"]) if solution_class else None
                method = _in_time(number, getattr, owner, fn_name) if solution_class else program[fn_name]
            got = _in_time(number, method, *[json.loads(line) for line in test["input"].split("\n")])
            ok = (list(got) if type(got) is tuple else got) == json.loads(test["output"])
        else:
            printed = _in_time(number, program["run_stdin"], test["input"])
            ok = type(printed) is str and same_printed_output(printed, test["output"])
        if not ok:
            raise AssertionError(f"test {number} ({test['testtype']}): wrong answer")


def check_value(program: dict, name: str, expected: str) -> None:
    """CRUXEval's ``assert {expected} == {answer}``: the expected output (a Python expression of the
    dataset) evaluated here, compared with the value the program's function ``name`` returns."""
    if not eval(expected, {}) == program[name]():  # noqa: S307 - the dataset's own literal
        raise AssertionError("wrong answer")
