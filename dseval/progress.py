"""Progress display: a rich bar with throughput and ETA for every long step."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Docs per second, the number a user compares between backends."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("- docs/s" if speed is None else f"{speed:.2f} docs/s", style="progress.data.speed")


def make_progress(enabled: bool = True) -> Progress:
    """A progress display; ``enabled=False`` (ranks other than 0) shows nothing."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not enabled,
    )
