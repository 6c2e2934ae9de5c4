"""Where task data comes from: a local folder in the layout of shared/data, or the Hub.

Offline use is first-class: ``--data-dir DIR`` (or ``DSEVAL_DATA_DIR``) reads local files and
nothing touches the network. Fetching from the Hugging Face Hub happens only when the user asks
for it by name (``--data-dir hub``). Readers here turn a malformed row into a
:class:`~dseval.errors.UserError` that names the file and line, never a bare traceback.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dseval.errors import UserError

HUB = "hub"


@dataclass(frozen=True)
class DatasetSpec:
    """A task's data: its Hub id, config and split, and its path under a local data folder."""

    hub_id: str
    split: str
    local: str
    hub_config: str | None = None

    def describe(self) -> str:
        config = f"/{self.hub_config}" if self.hub_config else ""
        return f"{self.hub_id}{config} [{self.split}] | <data-dir>/{self.local}"


class DataSource:
    """Resolves a :class:`DatasetSpec` to rows, from a local folder or (only when asked) the Hub."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        chosen = data_dir if data_dir is not None else os.environ.get("DSEVAL_DATA_DIR")
        self.hub = chosen == HUB
        self.root = None if chosen is None or self.hub else Path(chosen).expanduser()
        if self.root is not None and not self.root.is_dir():
            raise UserError(f"data folder {self.root} does not exist (from --data-dir / DSEVAL_DATA_DIR)")

    def describe(self) -> str:
        """Where the data came from, as run.json records it."""
        return HUB if self.hub else str(self.root.resolve()) if self.root is not None else "none"

    def local(self, spec: DatasetSpec, relative: str | None = None) -> Path | None:
        """The local file or folder for ``spec`` (or ``relative`` under the data folder), or
        None when reading from the Hub or no data folder was given."""
        if self.root is None:
            return None
        path = self.root / (relative or spec.local)
        if not path.exists():
            raise UserError(f"missing data: {path} (expected the layout of shared/data; see --data-dir)")
        return path

    def require_local(self, spec: DatasetSpec, relative: str | None = None) -> Path:
        path = self.local(spec, relative)
        if path is None:
            raise UserError(
                f"no data for {spec.hub_id}: pass --data-dir DIR (a folder laid out like shared/data) "
                "or --data-dir hub to download it from the Hugging Face Hub"
            )
        return path

    def jsonl_rows(self, spec: DatasetSpec, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        """Rows of a JSON Lines dataset, from the Hub (the spec's id, config and split) or the
        local file, each local row checked to have ``fields`` (the error names file:line)."""
        if self.hub:
            return self.hub_rows(spec.hub_id, spec.hub_config, spec.split)
        path = self.require_local(spec)
        rows = read_jsonl(path)
        for number, row in enumerate(rows, 1):
            require_fields(row, fields, f"{path}:{number}")
        return rows

    def hub_rows(self, hub_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
        """Rows of a Hub dataset via `datasets` (cached by it; honours HF_DATASETS_OFFLINE).

        When the Hub cannot be reached within a few seconds, `datasets` is switched to offline
        mode before it is imported, so a cached dataset still loads and a missing one fails at
        once instead of after a long series of retries.
        """
        if "datasets" not in sys.modules and not hub_reachable():
            os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        import datasets  # deferred: importing datasets costs a second and most runs are local

        try:
            return [dict(row) for row in datasets.load_dataset(hub_id, config, split=split)]
        except Exception as err:  # datasets raises many kinds; all mean "could not get the data"
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            why = "the Hub is unreachable and the dataset is not in the local cache" if offline else str(err).split("\n")[0]
            raise UserError(f"--data-dir hub: cannot load {hub_id} (config {config or 'default'}, split {split}): "
                            f"{why}; use --data-dir DIR with a local copy") from err


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint ($HF_ENDPOINT) opens within ``timeout_s``;
    false at once when offline mode is already set."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)), timeout_s):
            return True
    except OSError:
        return False


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file (gzipped when it ends in .gz); a bad line names file:line."""
    rows = []
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from err
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from err
    return rows


def read_json(path: Path) -> Any:
    try:
        with _open_text(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from err


def read_csv(path: Path, columns: int) -> Iterator[tuple[int, list[str]]]:
    """Rows of a header-less CSV with exactly ``columns`` fields, with their line numbers.

    Uses a real CSV parser (quoted fields hold embedded line breaks in MMLU), so the reported
    line is the one where the row starts.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            start = 1
            for row in reader:
                if len(row) != columns:
                    raise UserError(f"{path}:{start}: expected {columns} columns, found {len(row)}")
                yield start, row
                start = reader.line_num + 1
    except csv.Error as err:
        raise UserError(f"{path}: malformed CSV ({err})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from err


def require_fields(row: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    """Check a data row has the fields a task reads; the error names where the row came from."""
    missing = [name for name in fields if name not in row]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}")


def local_rows(source: DataSource, spec: DatasetSpec, fields: tuple[str, ...], relative: str | None = None) -> list[dict[str, Any]]:
    """Rows of a file that only exists in the reference layout under ``--data-dir`` (no Hub copy
    has the same fields), each checked for ``fields``: JSON Lines, or one JSON array (.json)."""
    if source.root is None:
        raise UserError(f"{relative or spec.local} has no Hub copy in its reference layout: pass --data-dir DIR "
                        "(a folder laid out like shared/data)")
    path = source.require_local(spec, relative)
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise UserError(f"{path}: expected a JSON array of objects")
    else:
        rows = read_jsonl(path)
    for number, row in enumerate(rows, 1):
        require_fields(row, fields, f"{path}:{number}")
    return rows
