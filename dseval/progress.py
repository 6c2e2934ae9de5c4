"""Progress display: a rich bar with throughput and ETA for every long step."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.table import Column
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
    """Docs answered per second since the task started, the number a user compares between
    backends (the bar itself also counts the share of open docs' generation done)."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("docs_s")
        return Text("- docs/s" if rate is None else f"{rate:.2f} docs/s", style="progress.data.speed")


class TokenRateColumn(ProgressColumn):
    """Tokens per second through the model (prompt tokens computed plus tokens generated): what
    the GPU is doing while docs are still in flight."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("tok_s")
        return Text("- tok/s" if rate is None else f"{rate:,.0f} tok/s", style="progress.data.speed")


class Refresher:
    """Calls ``update`` every ``interval`` seconds on a daemon thread while the block runs, and
    once more as it ends: the engine's step loop holds the main thread between finished docs,
    and a bar fed only then would stand still through a batch of long generations."""

    def __init__(self, update: Callable[[], None], interval: float = 0.5) -> None:
        self.update = update
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dseval-progress", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and self._show():
            pass

    def _show(self) -> bool:
        """One update; False once it failed: the display must never end a run (the run's own
        calls report their errors)."""
        try:
            self.update()
        except Exception:  # noqa: BLE001
            self.update = lambda: None
            return False
        return True

    def __enter__(self) -> Refresher:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if kind is None:
            self._show()


def make_progress(enabled: bool = True) -> Progress:
    """A progress display; ``enabled=False`` (ranks other than 0) shows nothing. Every column
    but the bar keeps to one line and the bar takes what is left, so an 80-column log (CI,
    a file) gets one line per task."""

    def line() -> Column:
        return Column(no_wrap=True)

    return Progress(
        TextColumn("[bold]{task.description}", table_column=line()),
        BarColumn(bar_width=None),
        MofNCompleteColumn(table_column=line()),
        TaskProgressColumn(table_column=line()),
        RateColumn(table_column=line()),
        TokenRateColumn(table_column=line()),
        TimeElapsedColumn(table_column=line()),
        TextColumn("eta", table_column=line()),
        TimeRemainingColumn(table_column=line()),
        console=console,
        transient=False,
        disable=not enabled,
    )
