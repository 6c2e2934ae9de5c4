"""Backends are found by ``--model`` spec prefix: built-ins, the ``dseval.backends`` entry-point
group of installed packages, and backends registered in the process."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import dseval.backends.registry as registry
import dseval.plugins as plugins
from dseval.backends.base import BackendOptions, ModelBackend
from dseval.backends.builtin import BACKENDS
from dseval.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_declares_the_builtin_list() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["dseval.backends"]
    assert declared == BACKENDS


@pytest.mark.parametrize("prefix", sorted(BACKENDS))
def test_each_builtin_is_a_backend_class_with_help(prefix: str) -> None:
    cls = registry.backend_class(prefix)
    assert issubclass(cls, ModelBackend) and cls.spec_help


def test_a_third_party_entry_point_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    plugin = EntryPoint(name="fake", value="fake_model:FakeBackend", group="dseval.backends")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [plugin] if group == "dseval.backends" else [])
    monkeypatch.setattr(registry, "_REGISTERED", {})
    backend = registry.load_backend("fake:A", BackendOptions())
    assert type(backend).__name__ == "FakeBackend" and backend.scorer.__name__ == "<lambda>"
    assert {"engine", "openai", "replay", "fake"} <= set(registry.backend_kinds())


def test_an_entry_point_that_is_not_a_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = EntryPoint(name="bad", value="dseval.errors:UserError", group="dseval.backends")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [plugin] if group == "dseval.backends" else [])
    with pytest.raises(UserError, match="'bad'.*not a ModelBackend"):
        registry.load_backend("bad:x", BackendOptions())


def test_unknown_prefix_names_the_known_kinds() -> None:
    # Other test modules register backends of their own in this process: check the built-ins.
    with pytest.raises(UserError, match=r"'nosuch' is not a backend kind \(") as err:
        registry.load_backend("nosuch:thing", BackendOptions())
    for kind in ("engine", "openai", "openai-chat", "replay"):
        assert f"{kind}:..." in str(err.value)


def test_builtins_need_no_installed_entry_point(tmp_path: Path) -> None:
    saved = tmp_path / "out.jsonl"
    saved.write_text('{"id": "a", "output": "x"}\n')
    code = ("import importlib.metadata as m; m.entry_points = lambda **kw: []\n"
            "from dseval.backends.base import BackendOptions\n"
            "from dseval.backends.registry import load_backend\n"
            f"print(load_backend('replay:{saved}', BackendOptions()).description)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"replay of {saved}"
