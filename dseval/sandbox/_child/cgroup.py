"""Per-run cgroups: memory (shared memory, memfd, tmpfs pages and kernel slab included) and
process count for the whole run, whatever the program does with uids or namespaces.

Why on top of rlimits: RLIMIT_AS counts one process's address space, not memfd or SysV
segments it detached, nor tmpfs pages, nor the inodes of a file flood; RLIMIT_NPROC counts
per uid. A cgroup charges every page and task of the run to one place the kernel enforces.
Works with cgroup v2 (memory and pids enabled for our subtree) or v1 (separate memory and
pids hierarchies); where neither is writable the run goes on without it and says so.
"""

from __future__ import annotations

import os
import time

_ROOT = "/sys/fs/cgroup"


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for ctrl in controllers.split(",") if controllers else [""]:
                out[ctrl] = path
    return out


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK)


def parents() -> list[tuple[str, int]]:
    """(kind, directory fd) under which per-run cgroups are made: [("v2", fd)], or v1's
    [("memory", fd), ("pids", fd)], or the subset usable; [] when none is.

    Directory fds, because the worker no longer sees /sys once it has pivoted into the
    program's root; every later call works relative to them.
    """
    try:
        own = _own_paths()
    except OSError:
        return []
    v2 = os.path.join(_ROOT, own.get("", "/").lstrip("/"))
    try:
        with open(os.path.join(v2, "cgroup.subtree_control")) as fh:
            if {"memory", "pids"} <= set(fh.read().split()) and _writable_dir(v2):
                return [("v2", os.open(v2, os.O_RDONLY | os.O_DIRECTORY))]
    except OSError:
        pass
    found = []
    for ctrl in ("memory", "pids"):
        path = os.path.join(_ROOT, ctrl, own.get(ctrl, "/").lstrip("/"))
        if _writable_dir(path) and os.path.exists(os.path.join(path, "cgroup.procs")):
            found.append((ctrl, os.open(path, os.O_RDONLY | os.O_DIRECTORY)))
    return found


def _write(parent: int, rel: str, value: object) -> None:
    fd = os.open(rel, os.O_WRONLY, dir_fd=parent)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _exists(parent: int, rel: str) -> bool:
    try:
        os.stat(rel, dir_fd=parent)
        return True
    except OSError:
        return False


def create(bases: list[tuple[str, int]], name: str, memory_bytes: int, max_pids: int) -> list[tuple[int, str]]:
    """Make the run's cgroup(s) with their limits; return (parent fd, name) pairs."""
    made = []
    for kind, parent in bases:
        os.mkdir(name, dir_fd=parent)
        made.append((parent, name))
        if kind in ("v2", "memory"):
            limit = "memory.max" if kind == "v2" else "memory.limit_in_bytes"
            _write(parent, f"{name}/{limit}", memory_bytes)
            for extra, value in (("memory.swap.max", 0), ("memory.memsw.limit_in_bytes", memory_bytes)):
                if _exists(parent, f"{name}/{extra}"):
                    _write(parent, f"{name}/{extra}", value)
        if kind in ("v2", "pids"):
            _write(parent, f"{name}/pids.max", max_pids)
    return made


def join(made: list[tuple[int, str]]) -> None:
    for parent, name in made:
        _write(parent, f"{name}/cgroup.procs", os.getpid())


def sweep_stale(bases: list[tuple[str, int]]) -> None:
    """Remove run cgroups left by workers that were killed (named ``dseval-<pid>-<seq>``)."""
    for _, parent in bases:
        for name in os.listdir(parent):
            parts = name.split("-")
            if len(parts) != 3 or parts[0] != "dseval" or not parts[1].isdigit():
                continue
            try:
                os.kill(int(parts[1]), 0)
                continue  # its worker is alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:
                pass


def remove(made: list[tuple[int, str]]) -> None:
    """rmdir once the run's tasks are gone (a dying task may linger a few milliseconds)."""
    for parent, name in made:
        for _ in range(100):
            try:
                os.rmdir(name, dir_fd=parent)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)
