"""Ctrl-C held back across a step that must happen whole."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Delay SIGINT until the block ends, then deliver it to the handler that was in place.

    Appending samples and recording that they were appended is one step: a KeyboardInterrupt
    between the two would leave them queued, and the flush that runs on the way out would
    write them a second time. Only the main thread receives signals, and a handler installed
    outside Python could not be put back, so in those cases this is a plain block.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)
