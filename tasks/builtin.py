"""The built-in task plugins. The ``dseval.tasks`` entry point names this module: importing it
registers each task below, exactly as a third-party package's entry point registers its own."""

from dseval.tasks import (  # noqa: F401
    aime2024,
    alpacaeval2,
    arena_hard,
    bbh,
    cruxeval,
    drop,
    gsm8k,
    humaneval,
    livecodebench,
    math500,
    mbpp,
    mmlu,
    multiple_choice,
    niah,
    perplexity,
)
