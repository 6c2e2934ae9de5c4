"""Row order and grouping of published tables, for ``dseval leaderboard --layout``.

Each layout lists the tables of the DeepSeek-V3 README (the figures in ``results/reference/``)
in their order, each table's benchmarks in their row order, so a leaderboard of new runs next to
the reference columns reads row for row like the published one. Tasks are named by dseval task
id; a table row that dseval cannot run yet (BBH, LiveCodeBench, ...) still shows the published
columns, taking its name and metric from the reference files.
"""

from __future__ import annotations

from dataclasses import dataclass

from dseval.errors import UserError


@dataclass(frozen=True)
class Section:
    title: str
    tasks: tuple[str, ...]


LAYOUTS: dict[str, tuple[Section, ...]] = {
    "deepseek-v3-base": (
        Section("Academic (base models)", ("mmlu", "math", "bbh", "drop")),
        Section("Code generation (base models)", ("humaneval", "mbpp", "livecodebench")),
    ),
    "deepseek-v3-chat": (Section("Chat models", ("arena_hard", "alpacaeval2", "aime2024", "math500")),),
}


def get_layout(name: str) -> tuple[Section, ...]:
    if name not in LAYOUTS:
        raise UserError(f"--layout {name!r} is not known; use one of: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]
