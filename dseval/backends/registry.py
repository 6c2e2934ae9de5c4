"""Which backend a ``--model`` spec names.

``PREFIX:ARG`` picks the backend registered under PREFIX; anything else is a checkpoint folder
or a preset name for the built-in engine (prefix ``engine``). Backends come from the built-in
list (:mod:`dseval.backends.builtin`), from the ``dseval.backends`` entry-point group of
installed packages (name = prefix, value = ``module:Class``), and from :func:`register_backend`
in the running process. Each is a :class:`~dseval.backends.base.ModelBackend` subclass whose
``from_spec(arg, options)`` builds it.
"""

from __future__ import annotations

from pathlib import Path

from dseval.backends.base import BackendOptions, ModelBackend
from dseval.backends.builtin import BACKENDS
from dseval.errors import UserError
from dseval.plugins import plugin_entry_points

GROUP = "dseval.backends"
#: Backends registered in this process, ahead of the built-in list and the entry points.
_REGISTERED: dict[str, type[ModelBackend]] = {}


def register_backend(prefix: str, cls: type[ModelBackend]) -> type[ModelBackend]:
    """Make ``prefix:ARG`` specs build ``cls`` in this process (a script's or a test's own
    backend; packages declare an entry point instead)."""
    _REGISTERED[prefix] = cls
    return cls


def _prefixes() -> list[str]:
    return sorted({*plugin_entry_points(GROUP, BACKENDS), *_REGISTERED})


def backend_class(prefix: str) -> type[ModelBackend]:
    """The backend registered under ``prefix``, imported now."""
    if prefix in _REGISTERED:
        return _REGISTERED[prefix]
    target = plugin_entry_points(GROUP, BACKENDS)[prefix].load()
    if not (isinstance(target, type) and issubclass(target, ModelBackend)):
        raise UserError(f"backend {prefix!r} ({target!r}) is not a ModelBackend subclass")
    return target


def backend_kinds() -> dict[str, str]:
    """Registered spec prefixes and what their argument means."""
    return {prefix: backend_class(prefix).spec_help for prefix in _prefixes()}


def load_backend(spec: str, options: BackendOptions) -> ModelBackend:
    """Build the backend a ``--model`` spec names."""
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in _prefixes():
        return backend_class(prefix).from_spec(arg, options)
    if sep and not Path(spec).exists():
        kinds = ", ".join(f"{p}:..." for p in _prefixes())
        raise UserError(f"unknown model spec {spec!r}: {prefix!r} is not a backend kind ({kinds}) nor a folder")
    # A checkpoint folder or a preset name: the engine says which presets exist if neither.
    return backend_class("engine").from_spec(spec, options)
