"""Progress of `prepare_dataset`: events for a callback, and a rich progress bar that shows them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

STAGES = {
    "spool": "reading stdin",
    "count": "counting characters",
    "sample": "sampling text",
    "train": "training SentencePiece",
    "encode": "encoding",
    "split": "splitting",
}


@dataclass
class ProgressEvent:
    """A stage's progress: `done` of `total` bytes (`total` None when unknown, as for stdin)."""

    stage: str
    done: int
    total: Optional[int]

    @property
    def description(self) -> str:
        return STAGES.get(self.stage, self.stage)


ProgressHook = Callable[[ProgressEvent], None]


class RichProgress:
    """A `ProgressHook` drawing one rich bar per stage (bytes, speed, time left) on a console.

    Use as a context manager around the call; defaults to a console on stderr.
    """

    def __init__(self, console=None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, int] = {}
        self._started = False
        self._latest: dict[int, ProgressEvent] = {}
        self._last_update = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        if not self._started:  # started lazily: a run that fails early draws nothing
            self._progress.start()
            self._started = True
        task = self._tasks.get(event.stage)
        if task is None:
            task = self._tasks[event.stage] = self._progress.add_task(event.description, total=event.total)
        # Thousands of small files would make thousands of updates: keep the latest, draw a few.
        self._latest[task] = event
        now = time.monotonic()
        if now - self._last_update >= 0.05 or event.done == event.total:
            self._flush()
            self._last_update = now

    def _flush(self) -> None:
        for task, event in self._latest.items():
            self._progress.update(task, completed=event.done, total=event.total)
        self._latest.clear()

    def __enter__(self) -> "RichProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            self._flush()
            self._progress.stop()
            self._started = False
