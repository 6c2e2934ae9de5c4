"""What the sandbox runs: a program and, apart from it, the code that checks it."""

from __future__ import annotations

from dataclasses import dataclass

#: The one name under which tests with ``shared_globals=False`` see the program's globals.
PROGRAM = "PROGRAM"


@dataclass(frozen=True)
class Job:
    """``program`` is untrusted (the model's code); ``setup`` and ``tests`` are the task's.

    The program runs first, as a module of its own; then ``setup`` runs in the program's
    globals (fixtures and imports the tests expect, as the reference checkers share one
    namespace) and ``tests`` in a copy of them that the program cannot see. The run passes
    when all three finish without an exception. A job with no tests is a plain program whose
    own asserts decide.

    ``shared_globals=False`` is for checkers written for this harness rather than copied from a
    reference: the tests then run in globals of their own, where the program's globals are one
    dict, :data:`PROGRAM`. With shared globals a program that defines ``len`` or ``isinstance``
    changes what those names mean in the tests (as in the reference checkers); apart, nothing
    the program names can stand in for a built-in or a helper of the checker.
    """

    program: str
    tests: str = ""
    setup: str = ""
    shared_globals: bool = True

    def __post_init__(self) -> None:
        for name in ("program", "tests", "setup"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Job.{name} must be str, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.shared_globals, bool):
            raise TypeError(f"Job.shared_globals must be bool, got {type(self.shared_globals).__name__}")
