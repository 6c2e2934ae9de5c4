"""``python -m dseval`` (what ``torchrun ... -m dseval run`` starts on every rank)."""

from dseval.cli import main

main()
