"""Issue 22's attacks on LiveCodeBench and CRUXEval scoring, each a test: a program that does not
compute the answers must fail. The expected outputs exist only in the sandbox's checker process
and the comparisons run there on plain data (``dseval.scoring.checks``), so a forged ``__eq__``,
a memory or file search, a printed verdict, patched built-ins and tracing hooks all fail.

The jobs are built as the tasks build them (``io_job`` of LiveCodeBench, ``program`` of the
CRUXEval tasks) on tiny problems, so no real data is needed. Needs namespace isolation (root +
unshare, as in CI).
"""

from __future__ import annotations

import pytest
from conftest import namespaced_sandbox
from test_sandbox_attacks import VERDICT_FORGERY as FORGE

from dseval.records import Sample
from dseval.sandbox import ExecResult, Job, Sandbox, SandboxLimits
from dseval.task import get_task
from dseval.tasks.cruxeval import NOT_ONE_COMPARISON, compared_expression
from dseval.tasks.livecodebench import io_job

LIMITS = SandboxLimits(timeout_s=20.0, cpu_s=20.0, memory_bytes=512 << 20, file_size_bytes=16 << 20,
                       max_processes=32, max_open_files=64)
# A marker only the expected outputs hold (split here so this file's own text is no help).
SECRET = "SECRE" + "T_7f3a"
STDIN_TESTS = [{"input": "2 3\n", "output": f"5 {SECRET}\n", "testtype": "stdin"},
               {"input": "100 -5\n", "output": f"95 {SECRET}\n", "testtype": "stdin"}]
STDIN_GOLD = f"a, b = map(int, input().split())\nprint(a + b, {SECRET!r})\n"
FUNC_TESTS = [{"input": "2\n3", "output": "5", "testtype": "functional"},
              {"input": "[1, 2]\n[3]", "output": "[1, 2, 3]", "testtype": "functional"}]
FUNC_GOLD = "class Solution:\n    def join(self, a, b):\n        return a + b\n"
CRUX = {"code": "def f(s):\n    return s[::-1] + '_7f3a'", "input": "'TERCES'", "output": f"{SECRET!r}"}


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return namespaced_sandbox(LIMITS)


def _stdin(solution: str) -> Job:
    return io_job(solution, STDIN_TESTS, None)


def _functional(body: str) -> Job:
    """A ``Solution.join`` whose body is ``body`` (indented by 8)."""
    return io_job("class Solution:\n    def join(self, a, b):\n" + body, FUNC_TESTS, "join")


def _crux(task: str, answer: str) -> Job:
    sample = Sample(id=f"{task}/fake", index=0, prompt="", target=CRUX, fields={}, outputs=[answer])
    return get_task(task).program(sample, answer)


def _failed(res: ExecResult) -> None:
    assert res.status in ("failed", "timeout"), res
    assert SECRET not in res.stdout + res.stderr + res.reason, res


def test_honest_and_wrong_answers_still_score(sandbox: Sandbox) -> None:
    # a global that contains itself, under the prelude's recursion limit of 50,000, stays quick
    jobs = [_stdin(STDIN_GOLD), io_job(FUNC_GOLD + "scope = globals()\n", FUNC_TESTS, "join"),
            _crux("cruxeval_o", f"assert f('TERCES') == {SECRET!r}"), _crux("cruxeval_i", "assert f('TERCES') == ??"),
            _stdin("print(5)\n"), _functional("        return 5\n"), _crux("cruxeval_o", "assert f('TERCES') == 'x'"),
            _crux("cruxeval_i", "assert f('SECRET') == ??")]
    results = sandbox.run_all(jobs)
    assert [(r.status, r.tampered) for r in results[:4]] == [("passed", "")] * 4, results[:4]
    assert results[1].duration_s < 5, results[1]
    for res in results[4:]:
        assert res.status == "failed" and "wrong answer" in res.reason, res


ALWAYS_EQUAL = '''class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
    def strip(self):
        return self
'''


def test_always_equal_object_fails(sandbox: Sandbox) -> None:
    """Only data crosses to the checker: an object that claims equality with everything is
    compared by identity (and noted), a subclass of a built-in type by its plain value."""
    indented = "".join("        " + line + "\n" for line in ALWAYS_EQUAL.splitlines())
    int_lie = "class Five(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
    # A stdin solution rewrites the local its runner returns to the checker (through ctypes).
    forged_printout = ALWAYS_EQUAL + '''import ctypes, sys
class _Bytes:
    def decode(self, *args, **kwargs):
        return Anything()
class _Captured:
    def getvalue(self):
        return _Bytes()
_runner = sys._getframe(1)
_runner.f_locals["captured"] = _Captured()
ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(_runner), ctypes.c_int(0))
'''
    jobs = [_functional(indented + "        return Anything()\n"),
            _functional("".join("        " + line + "\n" for line in int_lie.splitlines()) + "        return Five(0)\n"),
            _stdin(forged_printout),
            _crux("cruxeval_o", "assert f('TERCES') == type('Anything', (), {'__eq__': lambda s, o: True})()"),
            _crux("cruxeval_i", "assert f(type('S', (str,), {'__eq__': lambda s, o: True, '__hash__': str.__hash__,"
                                " '__getitem__': lambda s, k: s, '__add__': lambda s, o: s})('x')) == ??")]
    results = sandbox.run_all(jobs)
    for res in results:
        _failed(res)
    assert "compared value of type Solution.join.<locals>.Anything" in results[0].tampered, results[0]
    assert "compared value of type Anything" in results[3].tampered, results[3]


HUNT = '''import ctypes, glob, os, re
_pattern = re.compile(rb"SECRE[T]_7f3[a]")
_found = []
for _line in open("/proc/self/maps"):
    _addr, _perms = _line.split()[:2]
    _start, _end = (int(x, 16) for x in _addr.split("-"))
    if _perms.startswith("rw") and _end - _start < (256 << 20):
        _found += _pattern.findall(ctypes.string_at(_start, _end - _start))
for _path in [*glob.glob("/tmp/**", recursive=True), *glob.glob("/proc/self/fd/*"), f"/proc/{os.getppid()}/mem",
              f"/proc/{os.getppid()}/environ", *glob.glob(f"/proc/{os.getppid()}/fd/*")]:
    try:
        fd = os.open(_path, os.O_RDONLY | os.O_NONBLOCK)
        _found += _pattern.findall(os.read(fd, 1 << 20))
        os.close(fd)
    except OSError:
        pass
_secret = (_found[0].decode() if _found else "nothing")
'''


def test_expected_output_is_not_in_the_programs_reach(sandbox: Sandbox) -> None:
    """The program searches its memory, its files, the checker's memory and descriptors for the
    expected output and answers with what it found: the marker is nowhere it can read."""
    stdin = HUNT + "_a, _b = map(int, input().split())\nprint(_a + _b, _secret)\n"
    func = "".join("        " + line + "\n" for line in HUNT.splitlines()) + \
        "        return a + b if isinstance(a, list) else _secret\n"
    crux = "assert f('TERCES') == (lambda ns: (exec(compile(" + repr(HUNT) + ", 'h', 'exec'), ns), ns['_secret'])[1])({})"
    for res in sandbox.run_all([_stdin(stdin), _functional(func), _crux("cruxeval_o", crux)]):
        _failed(res)


def test_forged_verdict_fails(sandbox: Sandbox) -> None:
    func = "".join("        " + line + "\n" for line in FORGE.splitlines()) + "        return 0\n"
    crux = f"assert f('TERCES') == (exec({FORGE!r}), 'x')[1]"
    for res in sandbox.run_all([_stdin(FORGE + "print('5 ok')\n"), _functional(func), _crux("cruxeval_o", crux),
                                _crux("cruxeval_i", f"assert f((exec({FORGE!r}), 'x')[1]) == ??")]):
        _failed(res)


# Every built-in and checker helper a comparison could use, rebound in the program's process: as
# names of its globals (which the checker receives) and, where the program's own side of the
# link does not need them, in its builtins module.
PATCH = '''import builtins as _b, json as _json
def _true(*args, **kwargs):
    return True
for _name in ("len", "zip", "isinstance", "type", "list", "eval", "getattr", "str", "repr", "all", "any", "json",
              "same_printed_output", "check_io_tests", "check_value", "_in_time", "PROGRAM", "AssertionError"):
    _scope[_name] = _true
for _name in ("zip", "eval", "all", "any"):
    setattr(_b, _name, _true)
_json.loads = _true
'''


def test_patched_builtins_change_nothing_in_the_checks(sandbox: Sandbox) -> None:
    """The checker has its own built-ins, and with ``Job.shared_globals=False`` no name of the
    program reaches the checker's code."""
    func = "class Solution:\n    def join(self, a, b):\n        return 0\n_scope = globals()\n" + PATCH
    stdin = "import sys\n_scope = sys._getframe(1).f_globals\n" + PATCH + "print(0)\n"
    crux = f"assert f('TERCES') == (exec({'_scope = globals()' + chr(10) + PATCH!r}, globals()), 'x')[1]"
    jobs = [io_job(func, FUNC_TESTS, "join"), _stdin(stdin), _crux("cruxeval_o", crux),
            _crux("cruxeval_i", crux.replace("assert f('TERCES') == (", "assert f((").replace("[1]", "[1]) == ??"))]
    for res in sandbox.run_all(jobs):
        _failed(res)


# A trace hook that rewrites whatever a checker's frame would hold: the verdict flag, the
# expected value, the comparison helpers.
TRACE = '''import sys as _sys, threading as _threading
def _tracer(frame, event, arg):
    for scope in (frame.f_globals, frame.f_locals):
        for key in ("ok", "expected", "got", "printed"):
            if key in scope:
                scope[key] = True
        for key in ("same_printed_output", "check_io_tests", "check_value"):
            if key in scope:
                scope[key] = lambda *a: True
    return _tracer
_sys.settrace(_tracer)
_threading.settrace(_tracer)
_sys.setprofile(_tracer)
'''


def test_tracing_hooks_reach_nothing_of_the_checks(sandbox: Sandbox) -> None:
    func = "class Solution:\n    def join(self, a, b):\n        return 0\n" + TRACE
    crux = f"assert f('TERCES') == (exec({TRACE!r}, globals()), 'x')[1]"
    results = sandbox.run_all([io_job(func, FUNC_TESTS, "join"), _stdin(TRACE + "print(0)\n"), _crux("cruxeval_o", crux)])
    for res in results:
        _failed(res)
    assert "tracing" in results[0].tampered, results[0]


def test_compared_expression_is_the_official_statements_right_side() -> None:
    """What ``assert {output} == {answer}`` compares the output with, by Python's own parse; any
    other shape of statement is refused (it would pass there on more than the value)."""
    assert compared_expression("[1, 2]", "[1, 2]  # the list") == "[1, 2]"
    assert compared_expression("'a'", "f('b'), 'message'") == "f('b')"  # the assert's message
    assert compared_expression("(1, 2)", "1, 2") == "1"  # the same split: fails there too
    assert compared_expression("3", "-3 if x else 3") is None
    for tail in ("3 or True", "3 == 3", "3\nx = 1", "3; x = 1", "3)", "f(\x00)"):
        assert compared_expression("3", tail) is None, tail


def test_answers_the_official_scorer_would_pass_without_the_value_fail(sandbox: Sandbox) -> None:
    """``== x or True`` passes the official statement with a wrong value, and so does a statement
    after the assert that rewrites what the checker reads: both are refused here."""
    assert _crux("cruxeval_o", "assert f('TERCES') == 'x' or True") == NOT_ONE_COMPARISON
    tail = _crux("cruxeval_i", "assert f('x'); __cruxeval_answer__ = lambda: " + repr(SECRET) + " == ??")
    assert tail == NOT_ONE_COMPARISON
    res = sandbox.run(tail)
    assert res.status == "failed" and "not one == comparison" in res.reason, res


def test_per_test_time_limit_kills_the_program(sandbox: Sandbox) -> None:
    """A functional solution that never returns: the checker's alarm ends the checks and the
    program is killed then, not at the run's deadline."""
    res = sandbox.run(_functional("        while True:\n            pass\n"))
    assert res.status == "failed" and "test 1: time limit (6 s) exceeded" in res.reason, res
    assert res.duration_s < LIMITS.timeout_s - 5, res
