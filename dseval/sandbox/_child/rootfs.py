"""The filesystem a sandboxed program sees in namespace mode.

Why a mount namespace and not just an unprivileged uid: world-writable host directories
(/tmp, /var/tmp, /dev/shm) and anything a careless admin left 0666 would still be writable.
Here the whole host tree is read-only, the program's working directory is a private,
size-capped tmpfs that vanishes with the namespace (nothing to clean up, no host disk to
fill), and the account databases are replaced so /etc/passwd reveals nothing about the host.
/dev holds only the harmless nodes (no /dev/kmsg, disks, kvm), and /run, where host services
keep their Unix sockets (dbus, databases; a network namespace does not cover those), is empty.
"""

from __future__ import annotations

import os

from . import linux

WORKDIR = "/tmp"
_FAKE_ACCOUNTS = {
    "/etc/passwd": "sandbox:x:{uid}:{gid}:dseval sandbox:/tmp:/usr/sbin/nologin\n",
    "/etc/group": "sandbox:x:{gid}:\n",
}
_HIDDEN = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers")
_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
              "stderr": "/proc/self/fd/2"}
_EMPTY = ("/run",)


def _blocking_ancestor(path: str) -> str | None:
    """The highest directory on ``path`` that other users cannot traverse (e.g. /root, 0700)."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        try:
            if not os.stat(current).st_mode & 0o001:
                return current
        except OSError:
            return None
    return None


def _expose(paths: list[str], stage: str) -> None:
    """Make ``paths`` reachable for the unprivileged uid when an ancestor is closed to it.

    Why: the interpreter may live under a private home (pyenv in /root). We cover the closed
    ancestor with an empty tmpfs holding only the needed paths, bind-mounted read-only, so
    the rest of that ancestor stays hidden.
    """
    groups: dict[str, list[str]] = {}
    for path in sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)}):
        top = _blocking_ancestor(path)
        if top and top != path and not any(path.startswith(q + "/") for q in groups.get(top, [])):
            groups.setdefault(top, []).append(path)
    for top, needed in groups.items():
        staged = []
        for i, path in enumerate(needed):
            spot = os.path.join(stage, str(len(staged)) + "-" + str(i))
            os.mkdir(spot)
            linux.mount(path, spot, None, linux.MS_BIND | linux.MS_REC)
            staged.append((spot, path))
        linux.mount("tmpfs", top, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "size=64k,mode=0755")
        for spot, path in staged:
            os.makedirs(path, mode=0o755, exist_ok=True)
            linux.mount(spot, path, None, linux.MS_MOVE)
            os.rmdir(spot)
        linux.make_readonly_recursive(top)


def _minimal_dev(stage: str, shm_bytes: int) -> None:
    """Build a small /dev on a staging tmpfs, then move it over the host's /dev."""
    flags = linux.MS_NOSUID | linux.MS_NOEXEC
    linux.mount("tmpfs", stage, "tmpfs", flags, "size=64k,mode=0755")
    for name in _DEV_NODES:
        host = os.path.join("/dev", name)
        if os.path.exists(host):
            node = os.path.join(stage, name)
            open(node, "w").close()
            linux.mount(host, node, None, linux.MS_BIND)
    for name, target in _DEV_LINKS.items():
        os.symlink(target, os.path.join(stage, name))
    os.mkdir(os.path.join(stage, "shm"))
    linux.make_readonly_recursive(stage)  # device nodes stay usable: ro blocks only fs changes
    linux.mount("tmpfs", os.path.join(stage, "shm"), "tmpfs", flags | linux.MS_NODEV,
                f"size={shm_bytes},mode=1777")
    linux.mount(stage, "/dev", None, linux.MS_MOVE)


def prepare(uid: int, gid: int, tmpfs_bytes: int, program: str, needed: list[str]) -> str:
    """Build the view in the current (fresh) mount namespace; return the program's path.

    ``needed``: directories the program must be able to read (interpreter prefix, site dirs).
    """
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)  # never propagate to the host
    linux.make_readonly_recursive("/")
    flags = linux.MS_NOSUID | linux.MS_NODEV
    linux.mount("tmpfs", WORKDIR, "tmpfs", flags, f"size={tmpfs_bytes},mode=0700,uid={uid},gid={gid}")
    stage = os.path.join(WORKDIR, ".dseval-stage")
    os.mkdir(stage, 0o700)
    _expose(needed, stage)
    _minimal_dev(stage, min(tmpfs_bytes, 16 << 20))
    os.rmdir(stage)
    for path in _EMPTY:
        if os.path.isdir(path):
            linux.mount("tmpfs", path, "tmpfs", flags | linux.MS_RDONLY, "size=4k,mode=0755")
    for target, template in _FAKE_ACCOUNTS.items():
        if os.path.isfile(target):
            staged = os.path.join(WORKDIR, ".dseval" + target.replace("/", "-"))
            with open(staged, "w") as fh:
                fh.write(template.format(uid=uid, gid=gid))
            linux.mount(staged, target, None, linux.MS_BIND)
            os.unlink(staged)  # the bind mount keeps the inode; the program cannot edit it (root 0644)
    for target in _HIDDEN:
        if os.path.exists(target):
            linux.mount("/dev/null", target, None, linux.MS_BIND)
    path = os.path.join(WORKDIR, "prog.py")
    with open(path, "w") as fh:
        fh.write(program)
    return path


def mount_proc() -> None:
    """Mount a procfs for the new pid namespace: the program sees only its own processes."""
    linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
