"""dseval.sandbox: positive behaviour, the completion proof, and a hostile-program table.

The hostile table needs namespace isolation (root + unshare, as in CI) and is skipped with the
probe's reason elsewhere; a separate test exercises the fallback mode.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dseval.sandbox import ExecResult, Sandbox, SandboxLimits, isolation, summarize, verdict

HOSTILE_LIMITS = SandboxLimits(timeout_s=4.0, cpu_s=3.0, memory_bytes=1 << 30, file_size_bytes=16 << 20,
                               max_processes=32, max_open_files=64, max_output_bytes=16 << 10)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(HOSTILE_LIMITS, workers=2)


@pytest.fixture(scope="module")
def ns_sandbox(sandbox: Sandbox) -> Sandbox:
    if sandbox.isolation != "namespaces":
        pytest.skip(f"namespace isolation unavailable here: {sandbox.isolation_note}")
    return sandbox


# ---------------------------------------------------------------- positive behaviour

def test_correct_program_passes(sandbox: Sandbox) -> None:
    res = sandbox.run("def add(a, b):\n    return a + b\n\nprint('hi')\nassert add(2, 3) == 5\n")
    assert res.status == "passed", res
    assert res.reason == ""
    assert res.stdout == "hi\n"
    assert 0 < res.duration_s < HOSTILE_LIMITS.timeout_s
    assert set(res.to_json()) == {"status", "reason", "stdout", "stderr", "duration_s", "tampered", "protections"}
    assert res.tampered == ""
    assert "rlimits" in res.protections


def test_assertion_failure_reports_reason(sandbox: Sandbox) -> None:
    res = sandbox.run("x = 1\nassert x == 2, 'x should be two'\n")
    assert res.status == "failed"
    assert res.reason == "AssertionError: x should be two"
    assert "prog.py" in res.stderr and "line 2" in res.stderr
    assert "_child" not in res.stderr  # the runner's own frames are hidden


def test_syntax_error_is_a_failure_not_an_error(sandbox: Sandbox) -> None:
    res = sandbox.run("def broken(:\n    pass\n")
    assert res.status == "failed"
    assert res.reason.startswith("SyntaxError")


@pytest.mark.parametrize("code, why", [
    ("import sys\nsys.exit(0)\nassert False\n", "SystemExit(0)"),
    ("raise SystemExit\n", "SystemExit(None)"),
    ("import os\npid = os.fork()\nif pid:\n    os.waitpid(pid, 0)\n    os._exit(0)\n", "before reaching the end"),
])
def test_early_exit_with_code_zero_fails(sandbox: Sandbox, code: str, why: str) -> None:
    # The last case lets a forked child run to the end: only the original process may prove it.
    res = sandbox.run(code)
    assert res.status == "failed"
    assert why in res.reason


def test_program_gets_its_own_writable_cwd_and_no_network(sandbox: Sandbox) -> None:
    code = (
        "import os, tempfile\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "assert open('scratch.txt').read() == 'ok'\n"
        "with tempfile.NamedTemporaryFile() as fh: fh.write(b'x')\n"
        "assert os.getuid() != 0 and os.geteuid() != 0\n"
    )
    res = sandbox.run(code)
    assert res.status == "passed", res


def test_timeout_is_enforced(sandbox: Sandbox) -> None:
    sb = Sandbox(SandboxLimits(timeout_s=1.0), workers=1)
    start = time.monotonic()
    res = sb.run("import time\ntime.sleep(60)\n")
    assert res.status == "timeout"
    assert "wall-clock" in res.reason
    assert time.monotonic() - start < 5.0


def test_run_all_keeps_order_and_calls_back_for_each(sandbox: Sandbox) -> None:
    programs = [f"import time\ntime.sleep({0.3 if i % 2 == 0 else 0.0})\nprint({i})\nassert {i} % 3 != 0\n"
                for i in range(7)]
    seen: list[int] = []
    lock = threading.Lock()

    def on_result(index: int, res: ExecResult) -> None:
        with lock:
            seen.append(index)
        assert res.stdout == f"{index}\n"

    results = sandbox.run_all(programs, on_result=on_result)
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(7)]
    assert [r.status for r in results] == ["failed" if i % 3 == 0 else "passed" for i in range(7)]
    assert sorted(seen) == list(range(7))
    assert summarize(results) == {"passed": 4, "failed": 3, "timeout": 0, "error": 0, "total": 7, "tampered": 0}
    assert sandbox.run_all([]) == []


_EXIT = "{'event': 'exit', 'kind': 'exited', 'value': 0, 'leftover': %d}"


def _verdict(completed: bool = True, reason: str = "", kind: str = "exited", value: int = 0) -> str:
    return repr({"event": "verdict", "completed": completed, "reason": reason, "notes": [],
                 "program": {"kind": kind, "value": value}})


@pytest.mark.parametrize("sup, ctl, timed_out, expected", [
    ([_verdict(), _EXIT % 0], "", False, ("passed", "")),
    ([_verdict(completed=False), _EXIT % 0], "", False,
     ("failed", "exited with code 0 before reaching the end of the program")),
    ([_verdict(), _EXIT % 2], "", False, ("failed", "left 2 process(es) running after the program ended")),
    ([_verdict(completed=False, value=1), _EXIT % 0], "EXC ValueError: bad", False, ("failed", "ValueError: bad")),
    ([_verdict(reason="AssertionError"), _EXIT % 0], "EXC forged", False, ("failed", "AssertionError")),
    ([_verdict(completed=False, kind="signaled", value=24), _EXIT % 0], "", False,
     ("timeout", "CPU time limit of 10 s exceeded")),
    ([_verdict(kind="signaled", value=9), _EXIT % 0], "", False, ("failed", "killed by SIGKILL")),
    # the checker itself killed (by the program, or the memory cgroup): never a pass
    (["{'event': 'exit', 'kind': 'signaled', 'value': 9, 'leftover': 0}"], "", False, ("failed", "killed by SIGKILL")),
    ([_EXIT % 0], "", False, ("failed", "the checks ended without a verdict")),
    (["{'event': 'error', 'message': 'init setup: boom'}", _verdict()], "", False, ("error", "init setup: boom")),
    ([_verdict()], "", False, ("error", "sandbox worker ended the run without a status")),
    ([], "", True, ("timeout", "wall-clock limit of 10 s exceeded")),
])
def test_verdict_rules(sup: list[str], ctl: str, timed_out: bool, expected: tuple[str, str]) -> None:
    """Only the trusted channel decides how the run ended; only the checker's verdict passes a run,
    whatever the program's control lines say."""
    got = verdict.decide(verdict.events("\n".join(sup).encode()), (ctl + "\n").encode(), timed_out, SandboxLimits())
    assert got == (*expected, "")


def test_tamper_lines_are_collected_and_capped() -> None:
    ctl = "junk without newline\nTAMPER frame access (sys._getframe)\nPASS forged\nTAMPER gc walk\n" \
          "TAMPER frame access (sys._getframe)\n" + "TAMPER " + "x" * 1000 + "\n"
    sup = verdict.events(f"{_verdict()}\n{_EXIT % 0}\n".encode())
    status, reason, tampered = verdict.decide(sup, ctl.encode(), False, SandboxLimits())
    assert (status, reason) == ("passed", "")
    assert tampered.startswith("frame access (sys._getframe); gc walk; xxx") and len(tampered) == 300


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="workers"):
        Sandbox(workers=0)
    with pytest.raises(TypeError):
        Sandbox().run(b"print(1)")  # type: ignore[arg-type]
    assert Sandbox().workers == (os.cpu_count() or 1)  # default: all cores


def test_unknown_isolation_setting_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(isolation.ENV_VAR, "docker")
    with pytest.raises(ValueError, match=isolation.ENV_VAR):
        Sandbox()


def test_fallback_mode_refuses_sockets_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(isolation.ENV_VAR, "fallback")
    workdirs_before = set(Path(tempfile.gettempdir()).glob("dseval-sbx-*"))
    sb = Sandbox(SandboxLimits(timeout_s=5.0), workers=1)
    assert sb.isolation == "fallback"
    assert sb.run("assert sum([1, 2]) == 3\n").status == "passed"
    res = sb.run("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n")
    assert res.status == "failed"
    assert "refused" in res.reason
    marker = f"dseval-fallback-{os.getpid()}"
    daemon = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    os.environ['M'] = {marker!r}\n"
        "    time.sleep(300)\n"
    )
    res = sb.run(daemon)
    if os.geteuid() == 0:  # only root can drop to a throwaway uid and sweep by it
        assert res.status == "failed", res
        assert "left 1 process" in res.reason
        assert _stray_uids() == []
    assert set(Path(tempfile.gettempdir()).glob("dseval-sbx-*")) == workdirs_before


# ---------------------------------------------------------------- hostile table

def _stray_uids() -> list[int]:
    """Pids of live processes still running under one of this process's sandbox uids."""
    uids, stray = isolation.uid_range(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "0").split()[0]) in uids and not fields.get("State", "").strip().startswith("Z"):
            stray.append(int(entry))
    return stray


def _with_marker(marker: str) -> list[int]:
    hits = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    hits.append(int(entry))
            except OSError:
                continue
    return hits


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Mode and content hash of every entry under root (and root itself)."""
    out = {".": (root.stat().st_mode, "")}
    for path in sorted(root.rglob("*")):
        data = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (path.stat().st_mode, data)
    return out


@pytest.fixture()
def canary() -> Iterator[Path]:
    """A world-writable dir + 0666 file the sandbox can see: only the read-only mount protects it."""
    base = "/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir()
    root = Path(tempfile.mkdtemp(prefix="dseval-canary-", dir=base))
    root.chmod(0o777)
    (root / "canary.txt").write_text("do not touch\n")
    (root / "canary.txt").chmod(0o666)
    yield root
    for path in sorted(root.rglob("*"), reverse=True):
        path.unlink() if not path.is_dir() else path.rmdir()
    root.rmdir()


def _serve(srv: socket.socket, address: object) -> Iterator[tuple[object, list[object]]]:
    """Accept (and record) connections on ``srv`` in a thread for the duration of a test."""
    srv.listen(8)
    srv.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(srv.accept())
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield address, accepted
    stop.set()
    thread.join()
    srv.close()


@pytest.fixture()
def listener() -> Iterator[tuple[object, list[object]]]:
    """A TCP server on 127.0.0.1 that records any connection it gets."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    yield from _serve(srv, srv.getsockname()[1])


@pytest.fixture()
def unix_listener() -> Iterator[tuple[object, list[object]]]:
    """A world-connectable Unix socket where host services keep theirs (/run, if it exists)."""
    base = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
    path = os.path.join(base, f"dseval-hostile-{os.getpid()}.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    os.chmod(path, 0o777)
    try:
        yield from _serve(srv, path)
    finally:
        os.unlink(path)


# name -> (program template, allowed statuses, substring expected in reason or "")
HOSTILE: dict[str, tuple[str, set[str], str]] = {
    # Host folders outside the allowlist do not exist in the program's view at all.
    "delete_files_outside": ("import shutil\nshutil.rmtree({root!r})\n", {"failed"}, "No such file"),
    "overwrite_file_outside": ("open({canary!r}, 'w').write('pwned')\n", {"failed"}, "No such file"),
    "write_world_writable_dir": ("open({root!r} + '/new.txt', 'w').write('x')\n", {"failed"}, "No such file"),
    "write_system_folder": ("open('/usr/dseval-pwned', 'w').write('x')\n", {"failed"}, "Read-only"),
    "read_etc_passwd": ("d = open('/etc/passwd').read()\nprint(d)\nassert 'root:' in d\n", {"failed"},
                        "AssertionError"),
    "read_kernel_log": ("print(open('/dev/kmsg').read(4096))\n", {"failed"}, "No such file"),
    "unix_socket_of_host_service": ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix!r})\n",
                                    {"failed"}, "No such file"),
    "read_host_environ": ("print(open('/proc/1/environ').read())\n", {"failed"}, "PermissionError"),
    "socket_to_localhost": ("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
                            {"failed"}, "unreachable"),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  {"failed", "timeout"}, ""),
    "thread_bomb": ("import threading, time\nfor _ in range(100000):\n"
                    "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
                    {"failed"}, "thread"),
    "allocate_50_gb": ("x = bytearray(50 * 2**30)\nassert x\n", {"failed"}, "MemoryError"),
    "infinite_loop": ("while True:\n    pass\n", {"timeout"}, ""),
    "sleep_forever": ("import time\ntime.sleep(10**6)\n", {"timeout"}, "wall-clock"),
    "ignore_signals_and_spin": ("import signal\nfor s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT):\n"
                                "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
                                {"timeout", "failed"}, ""),
    "write_10_gb_file": ("c = b'x' * (1 << 20)\nwith open('big.bin', 'wb') as f:\n"
                         "    for _ in range(10240):\n        f.write(c)\n", {"failed"}, "File too large"),
    "fill_the_disk": ("c = b'x' * (1 << 20)\nfor i in range(1000):\n    with open(f'f{{i}}', 'wb') as f:\n"
                      "        for _ in range(15):\n            f.write(c)\n", {"failed"}, "No space left"),
    "exhaust_file_descriptors": ("fs = [open('/dev/null') for _ in range(100000)]\n", {"failed"},
                                 "Too many open files"),
    "os_exit_before_asserts": ("import os\nos._exit(0)\nassert False\n", {"failed"}, "before reaching the end"),
    "patch_sys_exit_and_hooks": ("import sys, os, atexit\nsys.exit = lambda *a, **k: None\n"
                                 "sys.excepthook = lambda *a: None\natexit.register(os._exit, 0)\nassert 1 == 2\n",
                                 {"failed"}, "AssertionError"),
    "patch_builtins_and_os": ("import builtins, os\nbuiltins.AssertionError = type('X', (Exception,), {{}})\n"
                              "os.write = lambda *a: 0\nbuiltins.print = lambda *a, **k: None\n"
                              "raise SystemExit(0)\n", {"failed"}, "SystemExit(0)"),
    "forge_completion_token": ("import os\nfor fd in range(3, 64):\n    try:\n"
                               "        os.write(fd, b'PASS ' + b'0' * 32 + b'\\n')\n    except OSError:\n"
                               "        pass\nos._exit(0)\n", {"failed"}, ""),
    "steal_token_from_gc": ("import gc, os\ntok = [o['token'] for o in gc.get_objects() if isinstance(o, dict) "
                            "and isinstance(o.get('token'), str)]\nassert tok, 'no token found'\n"
                            "for fd in range(3, 64):\n    try:\n"
                            "        os.write(fd, ('PASS ' + tok[0] + '\\n').encode())\n"
                            "    except OSError:\n        pass\nos._exit(0)\n", {"failed"}, "no token found"),
    "user_namespace_escape": ("import subprocess\nr = subprocess.run(['unshare', '--user', '--map-root-user', "
                              "'--mount', 'sh', '-c', 'umount -l /etc/passwd; mount -o remount,rw /; touch {root}/x && "
                              "grep -q ^root: /etc/passwd'])\nassert r.returncode == 0, 'escape failed'\n",
                              {"failed"}, "escape failed"),
    "kill_its_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                        "os.kill({harness_pid}, signal.SIGKILL)\n", {"failed"}, "Error"),
    "kill_everything": ("import os, signal\nos.kill(-1, signal.SIGKILL)\nos.kill(0, signal.SIGKILL)\n",
                        {"failed"}, ""),
    "leave_a_daemon_running": ("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', "
                               "'import time; time.sleep(300)  # {marker}'], start_new_session=True)\n",
                               {"failed"}, "left 1 process"),
    # Parity with the official checkers, which swallow output: kept up to the cap, not a failure.
    "print_256_mb": ("import sys\nc = 'x' * (1 << 20)\nfor _ in range(256):\n    sys.stdout.write(c)\n",
                     {"passed"}, ""),
    "chdir_chmod_tricks": ("import os\nos.chmod('.', 0)\nos.chdir('/')\nos.chdir('..')\n"
                           "os.chmod({root!r}, 0o700)\n", {"failed"}, "No such file"),
    "become_root": ("import os\nos.setuid(0)\n", {"failed"}, "PermissionError"),
    "remount_rw": ("import subprocess\nsubprocess.run(['mount', '-o', 'remount,rw', '/'], check=True)\n",
                   {"failed"}, ""),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_program_is_contained(kind: str, ns_sandbox: Sandbox, canary: Path,
                                      listener: tuple[int, list[object]],
                                      unix_listener: tuple[str, list[object]]) -> None:
    if kind == "user_namespace_escape" and shutil.which("unshare") is None:
        pytest.skip("util-linux unshare not installed")
    template, allowed, why = HOSTILE[kind]
    port, accepted = listener
    marker = f"dseval-hostile-{kind}-{os.getpid()}"
    unix_path, unix_accepted = unix_listener
    program = template.format(root=str(canary), canary=str(canary / "canary.txt"), port=port,
                              harness_pid=os.getpid(), marker=marker, unix=unix_path)
    before = _snapshot(canary)
    leftovers_before = set(Path(tempfile.gettempdir()).glob("dseval-sbx-*"))
    passwd = [ln for ln in Path("/etc/passwd").read_text().splitlines() if ln.strip()]

    res = ns_sandbox.run(program)

    assert res.status in allowed, res
    assert why in res.reason, res
    assert res.duration_s < HOSTILE_LIMITS.timeout_s + 5
    assert _snapshot(canary) == before
    assert not any(line in res.stdout or line in res.stderr for line in passwd)
    assert accepted == [] and unix_accepted == []
    assert _with_marker(marker) == []
    assert _stray_uids() == []
    assert set(Path(tempfile.gettempdir()).glob("dseval-sbx-*")) == leftovers_before
    assert len(res.stdout) <= HOSTILE_LIMITS.max_output_bytes + 100
    # The harness (this process) is alive and the sandbox still works.
    assert ns_sandbox.run("assert 2 + 2 == 4\n").status == "passed"


def test_hostile_table_is_big_enough() -> None:
    assert len(HOSTILE) >= 15


def test_hostile_programs_in_parallel(ns_sandbox: Sandbox) -> None:
    """A mix of bad programs on parallel workers does not disturb the good ones beside them."""
    bad = [HOSTILE[k][0] for k in ("fork_bomb", "allocate_50_gb", "exhaust_file_descriptors", "os_exit_before_asserts")]
    good = "assert sorted([3, 1, 2]) == [1, 2, 3]\n"
    programs = [p.format(root="/nonexistent", canary="/nonexistent", port=9, harness_pid=1, marker="m")
                for p in bad]
    results = ns_sandbox.run_all([good, *programs, good])
    assert results[0].status == results[-1].status == "passed"
    assert all(r.status in ("failed", "timeout") for r in results[1:-1])
    assert _stray_uids() == []
