"""Run identities (prompt and data hashes) must not change with how they are computed: a run
folder or baseline pinned earlier is compared against them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pytest

from dseval.provenance import content_hash


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


def whole_document_hash(items: Any) -> str:
    """The definition: sha256 of the canonical JSON of the whole value."""
    return hashlib.sha256(json.dumps(items, sort_keys=True, ensure_ascii=False, default=repr).encode("utf-8")).hexdigest()


@pytest.mark.parametrize("items", [
    [],
    [["prompt é 中文\n", [repr(Request("ctx", " A")), repr(Request("ctx", " B"))]]],
    [["id-1", {"b": 1, "a": [1.5, None, True]}, "target"], ["id-2", {}, None]],
    [Request("x", "y"), 3, "s", [[]]],                 # non-JSON values go through repr
    {"nested": [1, 2], "z": "last"},                     # not a list: hashed whole
    "a string",
    None,
])
def test_streamed_hash_equals_the_whole_document_hash(items: Any) -> None:
    assert content_hash(items) == whole_document_hash(items)


def test_hash_tells_contents_apart() -> None:
    assert content_hash([["a", "b"]]) != content_hash([["a", "c"]])
    assert content_hash([["a"], ["b"]]) != content_hash([["a", "b"]])
