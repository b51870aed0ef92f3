"""A job's progress for a person: a live display per stream on a terminal, or a ``progress``
log event at most every 10 s per stream without one (issue 12 §1).

Both watch the export core's ``StreamProgress`` and show the same figures (``figures``):
rows done, rows pending, records/s since the run began, and the ETA that rate gives. Rows
pending comes from the one count the core makes at the start of each run, so rows that
commit during the run are not in it (the next run finds them), and a run that meets late
rows or a paused record again may end a little past its total.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO, cast

import structlog

from crm_export.counters import record_counts
from crm_export.export import StreamProgress
from crm_export.watch import Watch

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

log = structlog.get_logger("crm_export.progress")

# Without a terminal, at most one ``progress`` event per stream this often.
LOG_EVERY_SECONDS = 10.0


def figures(progress: StreamProgress, elapsed: float) -> dict[str, Any]:
    """What both displays show of one stream run, ``elapsed`` seconds after it began.

    ``pending`` (rows still ahead), ``total`` and ``eta_seconds`` are None when the run's
    work was not counted (the re-export); ``eta_seconds`` also while nothing is done yet.
    """
    result = progress.result
    done = result.counts.read
    pending = None if progress.pending is None else max(0, progress.pending - done)
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = pending / rate if pending is not None and rate > 0 else None
    return {
        "job": str(result.job_id),
        "stream": result.stream,
        "run_id": result.run_id,
        "done": done,
        "pending": pending,
        "total": None if pending is None else done + pending,
        **record_counts(result),
        "records_per_second": round(rate, 1),
        "eta_seconds": None if eta is None else round(eta),
    }


class RunTimer:
    """Seconds since each run's first report, by run id (forgotten at its last)."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self.monotonic = monotonic
        self.started: dict[int, float] = {}

    def seconds(self, progress: StreamProgress) -> float:
        now = self.monotonic()
        started = self.started.setdefault(progress.result.run_id, now)
        if progress.finished:
            del self.started[progress.result.run_id]
        return now - started


class ProgressLog(Watch):
    """A ``progress`` log event per stream at most every ``every`` seconds while it runs.

    A run shorter than ``every`` logs none: its ``run_finished`` event says it all. The
    event comes after a batch is acknowledged, so a batch slower than ``every`` spaces them
    out further.
    """

    def __init__(
        self, every: float = LOG_EVERY_SECONDS, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.every = every
        self._elapsed = RunTimer(monotonic)
        self._last: dict[int, float] = {}

    def progress(self, progress: StreamProgress) -> None:
        run_id = progress.result.run_id
        elapsed = self._elapsed.seconds(progress)
        if progress.finished:
            self._last.pop(run_id, None)
            return
        if elapsed - self._last.get(run_id, 0.0) < self.every:
            return
        self._last[run_id] = elapsed
        log.info("progress", **figures(progress, elapsed))


class TerminalProgress(Watch):
    """A live line per stream on a terminal (rich): done of total, pending, records/s, ETA.

    Use it as a context manager around the job. ``log_stream`` is where log lines should go
    meanwhile, so that they print above the display instead of through it.
    """

    def __init__(self, console: Console, monotonic: Callable[[], float] = time.monotonic) -> None:
        # Imported here: every run imports this module, and only a terminal draws the bars.
        from rich.progress import BarColumn, Progress, TextColumn

        self.progress_bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[done_of]}"),
            TextColumn("{task.fields[pending_text]}"),
            TextColumn("{task.fields[rate_text]}"),
            TextColumn("{task.fields[eta_text]}"),
            console=console,
        )
        self._elapsed = RunTimer(monotonic)
        self._tasks: dict[int, TaskID] = {}

    @property
    def log_stream(self) -> TextIO:
        from rich.file_proxy import FileProxy

        console = self.progress_bar.console
        # A text stream whose lines rich prints above the live display.
        return cast(TextIO, FileProxy(console, console.file))

    def __enter__(self) -> TerminalProgress:
        self.progress_bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress_bar.stop()

    def progress(self, progress: StreamProgress) -> None:
        shown = figures(progress, self._elapsed.seconds(progress))
        run_id = progress.result.run_id
        task = self._tasks.get(run_id)
        if task is None:
            description = f"{shown['job']} {shown['stream']}"
            task = self.progress_bar.add_task(description, total=None, **_fields(shown))
            self._tasks[run_id] = task
        finished = progress.finished
        total = shown["total"]
        self.progress_bar.update(
            task,
            completed=shown["done"],
            # A bar with no total pulses; a finished run fills it, counted or not.
            total=shown["done"] if finished else total,
            **_fields(shown, outcome=str(progress.result.outcome) if finished else None),
        )
        if finished:
            del self._tasks[run_id]


def _fields(shown: dict[str, Any], outcome: str | None = None) -> dict[str, Any]:
    done, total, pending, eta = (
        shown["done"],
        shown["total"],
        shown["pending"],
        shown["eta_seconds"],
    )
    return {
        "done_of": f"{done:,}" if total is None else f"{done:,} of {total:,}",
        "pending_text": "" if pending is None else f"{pending:,} pending",
        "rate_text": f"{shown['records_per_second']:,.1f} records/s",
        "eta_text": outcome
        if outcome is not None
        else ("ETA -" if eta is None else f"ETA {timedelta(seconds=eta)}"),
    }
