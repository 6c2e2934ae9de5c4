"""The built-in task plugins. The ``dseval.tasks`` entry point names this module: importing it
registers each task below, exactly as a third-party package's entry point registers its own."""

from dseval.tasks import aime2024, alpacaeval2, arena_hard, drop, humaneval, math500, mbpp, mmlu, niah  # noqa: F401
