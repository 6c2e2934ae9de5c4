"""Keeping Python's cyclic garbage collector out of the harness's bulk work.

A full MMLU run holds tens of thousands of requests, each with its token list. Every
collection of the oldest generation walks every container object alive, and building that
many objects triggers such collections again and again, so building the requests (and any
loop that allocates while they exist) spends much of its time walking them. These objects
form no reference cycles, so there is nothing for the collector to find in them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def bulk_building() -> Iterator[None]:
    """No cyclic collection while the block builds many acyclic objects (reference counting
    still frees them); the collector's previous state is restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def long_lived() -> Iterator[None]:
    """Every object alive now (a task's docs, prompts, requests) is left out of collections
    until the block ends; objects made inside it are collected as usual."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
