"""Sandbox for model-generated code: isolated, resource-limited, parallel.

Public API (other modules code against exactly this)::

    from dseval.sandbox import Sandbox, SandboxLimits, ExecResult, Job
    Sandbox(limits, workers).run(Job(program, tests, setup, shared_globals)) -> ExecResult
    Sandbox(...).run_all(jobs, on_result) -> list[ExecResult]

Design notes live in ``isolation`` (why namespaces, what the fallback lacks), ``_child``
(the process tree that actually runs the program), ``_child.runner`` and ``_child.remote`` (the
tests run in a checker process that reaches the program only through data) and
``_child.tamper`` (what is flagged).
"""

from .core import Sandbox
from .job import PROGRAM, Job
from .limits import SandboxLimits
from .result import STATUSES, ExecResult, Status, summarize

__all__ = ["ExecResult", "Job", "PROGRAM", "STATUSES", "Sandbox", "SandboxLimits", "Status", "summarize"]
