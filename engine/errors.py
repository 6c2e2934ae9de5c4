"""The engine's errors: bad input, told apart from bugs.

An :class:`EngineError` means the caller gave the engine something it cannot use (a config
field, a checkpoint file, a parallel layout, a request); its one-line message names the field
or file at fault and what to do. Anything else the engine raises is a bug. The engine knows
nothing of the harness: ``dseval.backends.engine`` turns these errors into the harness's own
``UserError`` (one line, exit code 2) at the boundary.
"""

from __future__ import annotations


class EngineError(Exception):
    """Bad input to the engine; ``str(err)`` names the field or file at fault."""


class ConfigError(EngineError, ValueError):
    """A configuration field is invalid: ``config.json`` (ModelConfig), EngineConfig or
    SamplingParams. A ValueError too, as an invalid argument of the dataclass that holds it."""


class LayoutError(ConfigError):
    """A parallel layout the model cannot be split into (heads, vocabulary or experts do not divide)."""


class CheckpointError(EngineError):
    """A checkpoint on disk is unusable; the message names the tensor or field and the file."""


class RequestError(EngineError, ValueError):
    """A request the engine cannot serve as configured (longer than the context or the KV cache)."""
