"""User-facing errors.

A :class:`UserError` is bad input (unknown task, missing file, malformed row, bad flag). The CLI
prints its one-line message and exits with its code, without a traceback; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; ``str(err)`` names the file, line or field at fault."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
