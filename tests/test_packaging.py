"""The wheel holds every package, and no folder of the checkout shadows an installed package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def source_packages() -> dict[str, Path]:
    """Every folder holding Python files under the mapped roots, by its installed dotted name."""
    found = {}
    for name, folder in SETUPTOOLS["package-dir"].items():
        root = REPO / folder
        for path in root.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.parent.relative_to(root)
            found[".".join([name, *rel.parts])] = path.parent
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    assert sorted(source_packages()) == sorted(SETUPTOOLS["packages"])


def test_top_level_folders_are_not_importable_packages() -> None:
    """Only dseval/ may be a regular package at the root: a folder with an __init__.py named like
    a PyPI package (kernels/ and transformers' `kernels`) would shadow it from the root."""
    regular = sorted(p.parent.name for p in REPO.glob("*/__init__.py"))
    assert regular == ["dseval"]


def test_installed_kernels_package_wins_from_the_repo_root() -> None:
    probe = "import importlib.util as u, sys; s = u.find_spec('kernels'); print(s.origin if s else '')"
    origin = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert not origin.startswith(str(REPO / "kernels")), origin


def test_wheel_contains_every_module(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("dseval-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for dotted, folder in source_packages().items():
        for module in folder.glob("*.py"):
            assert f"{dotted.replace('.', '/')}/{module.name}" in names, (dotted, module.name)
