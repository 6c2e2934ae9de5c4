"""Sandbox for model-generated code: isolated, resource-limited, parallel.

Public API (other modules code against exactly this)::

    from dseval.sandbox import Sandbox, SandboxLimits, ExecResult
    Sandbox(limits, workers).run(program) -> ExecResult
    Sandbox(...).run_all(programs, on_result) -> list[ExecResult]

Design notes live in ``isolation`` (why namespaces, what the fallback lacks) and
``_child`` (the process tree that actually runs the program).
"""

from .core import Sandbox
from .limits import SandboxLimits
from .result import STATUSES, ExecResult, Status, summarize

__all__ = ["ExecResult", "STATUSES", "Sandbox", "SandboxLimits", "Status", "summarize"]
