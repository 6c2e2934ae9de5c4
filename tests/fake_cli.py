"""Entry point for CLI tests that need the fake model in a child process.

``FAKE_READ_DELAY_S`` makes replica 1 (``RANK=1`` under torchrun) read the finished samples
that long after the others: the order in which a slow machine would do it.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_model import FakeBackend  # noqa: E402

from dseval.cli import main  # noqa: E402
from dseval.store import RunStore  # noqa: E402

FakeBackend.register()
_delay = float(os.environ.get("FAKE_READ_DELAY_S", "0"))
if _delay and os.environ.get("RANK") == "1":
    _load = RunStore.load_samples

    def _late_load(self: RunStore, task: str, repair: bool = False) -> list:
        time.sleep(_delay)
        return _load(self, task, repair)

    RunStore.load_samples = _late_load  # type: ignore[method-assign]
main()
