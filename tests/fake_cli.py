"""Entry point for CLI tests that need the fake model in a child process."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_model import FakeBackend  # noqa: E402

from dseval.cli import main  # noqa: E402

FakeBackend.register()
main()
