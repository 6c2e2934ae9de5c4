"""docs/add-a-kernel.md stays true: its kernel and its test, exactly as printed, pass under the
Triton interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "add-a-kernel.md"


def code_blocks(text: str) -> dict[str, str]:
    """The ```python blocks of the page, keyed by the `path` named in the line before each."""
    blocks = {}
    for m in re.finditer(r"`([\w/.]+\.py)`:\n\n```python\n(.*?)```", text, re.S):
        blocks[m.group(1)] = m.group(2)
    return blocks


def test_the_page_names_a_kernel_and_its_test() -> None:
    assert set(code_blocks(DOC.read_text())) == {"kernels/silu_mul.py", "tests/test_kernels_silu_mul.py"}


def test_the_example_kernel_passes_its_float64_test(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    blocks = code_blocks(DOC.read_text())
    (tmp_path / "silu_mul.py").write_text(blocks["kernels/silu_mul.py"])
    (tmp_path / "test_kernels_silu_mul.py").write_text(blocks["tests/test_kernels_silu_mul.py"])
    # The test imports dseval.kernels.silu_mul: register the page's module under that name, as
    # if the file sat in kernels/, then collect the page's test with pytest.
    (tmp_path / "conftest.py").write_text(
        "import importlib.util, sys\n"
        "from pathlib import Path\n"
        "spec = importlib.util.spec_from_file_location('dseval.kernels.silu_mul', Path(__file__).parent / 'silu_mul.py')\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_kernels_silu_mul.py")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
