"""Code that runs *inside* the sandbox process tree, never in the harness.

These modules are started by ``python -I -S`` with only this folder on ``sys.path`` (see
``dseval.sandbox.execute``), so they import nothing but the standard library: the sandbox
process must not depend on the harness's site-packages state, and a program under test must
not be able to reach harness objects through shared imports.

Process tree (namespace mode)::

    harness ─ P0 supervisor (root; new mount/net/ipc/uts ns) ─ P1 init (pid 1 of a new pid ns)
                                                               └ P2 runner (unprivileged uid)

In fallback mode P0 forks the runner directly.
"""
