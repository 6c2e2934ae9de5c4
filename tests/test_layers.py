"""Imports run one way: kernels/ <- engine/ <- dseval/ <- tasks/, with no cycle between files.

The source tree is parsed, not imported, and every import counts: inside functions (a deferred
import that dodges a cycle is still a dependency) and under ``TYPE_CHECKING`` (a type that must
be imported from a higher floor lives on the wrong one).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Source folder -> the package it installs as (dseval/__init__.py maps them in a checkout).
FOLDERS = {"dseval": "dseval", "engine": "dseval.engine", "tasks": "dseval.tasks", "kernels": "dseval.kernels"}
#: What a task plugin may import: the contracts, data access and the shared scorers.
PUBLIC_API = ("dseval.task", "dseval.records", "dseval.requests", "dseval.data", "dseval.errors", "dseval.metrics",
              "dseval.scoring", "dseval.sandbox", "dseval.prompting", "dseval.judging")


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imported(name: str, path: Path) -> Iterator[str]:
    """Every dseval module ``name`` imports (a ``from package import module`` names the module)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: set(_imported(name, path)) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    for package in ("dseval.engine", "dseval.tasks", "dseval.kernels"):
        if module == package or module.startswith(package + "."):
            return package
    return "dseval"


def _inside(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(layer: str, allowed: tuple[str, ...]) -> list[str]:
    return [f"{m} imports {t}" for m in sorted(GRAPH) if _layer(m) == layer for t in sorted(GRAPH[m]) if not _inside(t, allowed)]


def test_the_scan_sees_the_known_imports() -> None:
    assert "dseval.records" in GRAPH["dseval.store"] and "dseval.task" in GRAPH["dseval.tasks.mmlu"]
    assert "dseval.kernels.mla_prefill" in GRAPH["dseval.engine.runtime.llm"]  # a deferred import counts


def test_kernels_import_nothing_of_the_project() -> None:
    assert _violations("dseval.kernels", ("dseval.kernels",)) == []


def test_engine_imports_only_itself_and_kernels() -> None:
    assert _violations("dseval.engine", ("dseval.engine", "dseval.kernels")) == []


def test_core_never_imports_its_task_plugins() -> None:
    # The registry loads them by name (dseval.task.BUILTIN_TASKS and entry points), not by import.
    assert [v for v in _violations("dseval", ("dseval",)) if "imports dseval.tasks" in v] == []


def test_tasks_import_only_the_public_api() -> None:
    assert _violations("dseval.tasks", (*PUBLIC_API, "dseval.tasks")) == []


def _cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


@pytest.mark.parametrize("package", [
    "dseval.kernels",
    "dseval.engine",
    "dseval.sandbox",
    "dseval",
    "dseval.tasks",
])
def test_no_import_cycle(package: str) -> None:
    def home(module: str) -> str:
        return "dseval.sandbox" if _inside(module, ("dseval.sandbox",)) else _layer(module)

    assert [group for group in _cycles() if any(home(m) == package for m in group)] == []


def test_a_cycle_is_found() -> None:
    """The cycle search itself: a two-module loop added to the graph is reported."""
    GRAPH["dseval.records"].add("dseval.metrics")
    try:
        assert ["dseval.metrics", "dseval.records"] in _cycles()
    finally:
        GRAPH["dseval.records"].discard("dseval.metrics")


#: The engine stays readable file by file: a file past this has grown a second job (split it).
ENGINE_MAX_LINES = 300


def test_engine_files_stay_small() -> None:
    long = {str(p.relative_to(REPO)): n for m, p in MODULES.items() if _layer(m) == "dseval.engine"
            for n in [len(p.read_text(encoding="utf-8").splitlines())] if n > ENGINE_MAX_LINES}
    assert long == {}
