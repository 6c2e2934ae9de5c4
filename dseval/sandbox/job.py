"""What the sandbox runs: a program and, apart from it, the code that checks it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    """``program`` is untrusted (the model's code); ``setup`` and ``tests`` are the task's.

    The program runs first, as a module of its own; then ``setup`` runs in the program's
    globals (fixtures and imports the tests expect, as the reference checkers share one
    namespace) and ``tests`` in a copy of them that the program cannot see. The run passes
    when all three finish without an exception. A job with no tests is a plain program whose
    own asserts decide.
    """

    program: str
    tests: str = ""
    setup: str = ""

    def __post_init__(self) -> None:
        for name in ("program", "tests", "setup"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Job.{name} must be str, got {type(getattr(self, name)).__name__}")
