"""Trusted status lines written to the supervisor channel: one Python dict literal per line.

Why literals and not JSON: ``json`` (with ``re`` and ``enum``) is the largest import of the
sandbox process; ``repr`` needs none and the harness reads the lines with ``ast.literal_eval``.
"""

from __future__ import annotations

import os


def report(fd: int, **event: object) -> None:
    try:
        os.write(fd, (repr(event) + "\n").encode())
    except OSError:
        pass  # the harness is gone or stopped listening; nothing useful left to do


def wait_status(status: int) -> dict[str, int | str]:
    """Turn a waitpid status into the fields of an ``exit`` event."""
    if os.WIFSIGNALED(status):
        return {"kind": "signaled", "value": os.WTERMSIG(status)}
    return {"kind": "exited", "value": os.waitstatus_to_exitcode(status)}
