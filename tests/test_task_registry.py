"""Tasks from other packages register through the ``dseval.tasks`` entry-point group; the
built-in ones are found also where no entry point is installed (a bare checkout)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import dseval.plugins as plugins
import dseval.task as base
from dseval.errors import UserError

PLUGINS = Path(__file__).parent / "plugins"
BUILTIN = ("'mmlu'", "'math500'", "'humaneval'", "'mbpp'", "'drop'", "'niah'")


def test_entry_point_task_is_found(monkeypatch) -> None:
    base.all_tasks()  # the built-ins stay registered after this test's registry is restored
    monkeypatch.syspath_prepend(str(PLUGINS))
    plugin = EntryPoint(name="thirdparty", value="thirdparty_task", group="dseval.tasks")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [plugin] if group == "dseval.tasks" else [])
    monkeypatch.setattr(base, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    assert "thirdparty" not in base._REGISTRY
    task = base.get_task("thirdparty")
    assert task.version == "7" and "mmlu" in base.all_tasks()


def test_all_builtin_tasks_are_registered_in_a_fresh_process() -> None:
    code = "from dseval.task import all_tasks; print(sorted(all_tasks()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in BUILTIN)


def test_builtin_tasks_need_no_installed_entry_point() -> None:
    code = ("import importlib.metadata as m; m.entry_points = lambda **kw: []\n"
            "from dseval.task import all_tasks; print(sorted(all_tasks()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in BUILTIN)


def test_duplicate_name_is_refused() -> None:
    clone = type("Clone", (base.Task,), {"name": "mmlu", "version": "x"})
    with pytest.raises(ValueError, match="registered twice"):
        base.register_task(clone)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="known tasks: .*mmlu"):
        base.get_task("nope")
