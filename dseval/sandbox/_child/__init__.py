"""Code that runs *inside* the sandbox process tree, never in the harness.

These modules are started by ``python -I -S`` with only this folder on ``sys.path`` (see
``dseval.sandbox.worker``), so they import nothing but the standard library: the sandbox
process must not depend on the harness's site-packages state, and a program under test must
not be able to reach harness objects through shared imports. All of them are imported before
the worker pivots into the program's root, where this folder is not visible; the runner
removes them from ``sys.modules`` before the program runs.

Process tree (namespace mode), one zygote per worker slot::

    harness ─ P0 zygote (root; mount/net/uts ns, allowlisted root) ─ A (per run: pid/mount/ipc ns,
              cgroup, fresh /tmp) ─ P1 init (pid 1) ─ P2 checker (unprivileged uid, seccomp,
              not dumpable; holds the tests and the verdict) ─ P3 program

In fallback mode P0 forks the checker directly.
"""
