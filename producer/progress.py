"""Progress of `streamscore score`: a rich bar (rate, ETA) on a terminal, plain lines elsewhere.

rich draws the bar only when stderr is a terminal; in a log file or CI the same facts come as one
line every `PLAIN_INTERVAL_S` seconds and a last one at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

PLAIN_INTERVAL_S = 5.0


class ScoreProgress(Protocol):
    """How far a score job is: requests answered (of `total`), requests published."""

    def update(self, answered: int, published: int) -> None: ...
    def close(self) -> None: ...


def make_progress(stream: TextIO, total: int, answered: int, *, bar: bool) -> ScoreProgress:
    """A rich bar when `bar` (stderr is a terminal), else plain lines on `stream`."""
    if bar:
        return BarProgress(stream, total, answered)
    return LineProgress(stream, total, answered)


class BarProgress:
    """rich's progress bar: answered of total, requests per second, time remaining."""

    def __init__(self, stream: TextIO, total: int, answered: int) -> None:
        self._progress = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("requests, {task.fields[published]:,} published,"),
            RateColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._task: TaskID = self._progress.add_task("score", total=total, completed=answered, published=0)
        self._progress.start()

    def update(self, answered: int, published: int) -> None:
        self._progress.update(self._task, completed=answered, published=published)

    def close(self) -> None:
        self._progress.stop()


class RateColumn(ProgressColumn):
    """Requests answered per second, as rich measures it over its recent samples."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} requests/s")


class LineProgress:
    """`scored n of N requests (p %), r requests/s, ETA h:mm:ss; m published`, every `interval` seconds."""

    def __init__(
        self,
        stream: TextIO,
        total: int,
        answered: int,
        *,
        interval: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream, self._total, self._interval, self._clock = stream, total, interval, clock
        self._started, self._first = clock(), answered  # the rate counts this run's answers only
        self._shown_at = self._started
        self._last = (answered, 0)

    def update(self, answered: int, published: int) -> None:
        self._last = (answered, published)
        if self._clock() - self._shown_at >= self._interval:
            self._show()

    def close(self) -> None:
        self._show()

    def line(self, answered: int, published: int) -> str:
        """The progress line for these counts, at the clock's time now."""
        elapsed = self._clock() - self._started
        rate = (answered - self._first) / elapsed if elapsed > 0 else 0.0
        share = answered / self._total * 100 if self._total else 100.0
        left = self._total - answered
        eta = str(timedelta(seconds=round(left / rate))) if rate > 0 else ("0:00:00" if left <= 0 else "?")
        return (
            f"scored {answered:,} of {self._total:,} requests ({share:.0f} %), {rate:,.0f} requests/s, "
            f"ETA {eta}; {published:,} published"
        )

    def _show(self) -> None:
        self._shown_at = self._clock()
        self._stream.write(self.line(*self._last) + "\n")
        self._stream.flush()
