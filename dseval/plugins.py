"""Plugins found by name: the built-ins a checkout ships, plus what installed packages declare.

Tasks (group ``dseval.tasks``) and model backends (group ``dseval.backends``) are both found
this way. Entry points come from installed package metadata, which a source checkout that was
never installed (or was installed before a plugin was added) does not have; so the harness
always starts from its own built-in list and then adds the installed entry points, which may
add names or replace a built-in one. Nothing is imported until it is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points


def plugin_entry_points(group: str, builtin: Mapping[str, str]) -> dict[str, EntryPoint]:
    """Name -> entry point for ``group``: ``builtin`` (name -> "module[:attr]") overlaid with the
    installed entry points of that group."""
    found = {name: EntryPoint(name=name, value=value, group=group) for name, value in builtin.items()}
    found.update((ep.name, ep) for ep in entry_points(group=group))
    return found
