"""What a person watching a job sees (issue 12 §1): the ``progress`` log event without a
terminal, at most every 10 s per stream, and the live display on one. The clock is
injected, so nothing here sleeps."""

from __future__ import annotations

import io
import re

import structlog
from rich.console import Console

from crm_export.export import StreamProgress, StreamResult
from crm_export.ports import JobId, RunCounts, RunOutcome
from crm_export.progress import ProgressLog, TerminalProgress, figures


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def at(
    read: int,
    pending: int | None = 50_000,
    *,
    stream: str = "contacts",
    run_id: int = 1,
    finished: bool = False,
) -> StreamProgress:
    job = JobId.EXPORT if pending is not None else JobId.REEXPORT
    counts = RunCounts(read=read, exported=read - 2, failed=2)
    result = StreamResult(job, stream, run_id, counts=counts)
    if finished:
        result.outcome = RunOutcome.COMPLETED
    return StreamProgress(result, pending, finished)


def test_figures_give_done_pending_rate_and_eta() -> None:
    shown = figures(at(12_200), elapsed=10.0)
    assert shown["done"] == 12_200
    assert shown["pending"] == 37_800 and shown["total"] == 50_000
    assert shown["records_per_second"] == 1220.0
    assert shown["eta_seconds"] == 31  # 37,800 rows at 1,220 a second
    assert (shown["exported"], shown["failed"]) == (12_198, 2)
    # Nothing done yet: no rate, no ETA. Past the count (late rows): nothing pending.
    assert figures(at(0), elapsed=0.0)["eta_seconds"] is None
    assert figures(at(50_010), elapsed=5.0)["pending"] == 0
    # The re-export is not counted ahead: no pending, no total, no ETA.
    uncounted = figures(at(40, pending=None), elapsed=2.0)
    assert (uncounted["pending"], uncounted["total"], uncounted["eta_seconds"]) == (None,) * 3


def test_the_progress_event_goes_out_at_most_every_interval_per_stream() -> None:
    clock = Clock()
    emitter = ProgressLog(every=10.0, monotonic=clock)
    with structlog.testing.capture_logs() as logs:
        emitter.progress(at(0))  # the run starts
        emitter.progress(at(0, stream="deals", run_id=2))
        for second in range(1, 26):
            clock.now += 1
            emitter.progress(at(second * 500))
            emitter.progress(at(second * 10, stream="deals", run_id=2))
        emitter.progress(at(13_000, finished=True))
    events = [e for e in logs if e["event"] == "progress"]
    contacts = [e for e in events if e["stream"] == "contacts"]
    assert [e["done"] for e in contacts] == [5_000, 10_000]  # at 10 s and 20 s, not more
    assert contacts[0]["pending"] == 45_000 and contacts[0]["records_per_second"] == 500.0
    assert contacts[0]["eta_seconds"] == 90 and contacts[0]["job"] == "CRMExport"
    assert [e["done"] for e in events if e["stream"] == "deals"] == [100, 200]
    assert all(e["log_level"] == "info" for e in events)


def test_a_run_shorter_than_the_interval_logs_no_progress_event() -> None:
    clock = Clock()
    emitter = ProgressLog(every=10.0, monotonic=clock)
    with structlog.testing.capture_logs() as logs:
        emitter.progress(at(0))
        clock.now += 9
        emitter.progress(at(200))
        emitter.progress(at(200, finished=True))
        # The next run of the stream starts its own count.
        emitter.progress(at(0, run_id=3))
        clock.now += 10
        emitter.progress(at(300, run_id=3))
    assert [e["done"] for e in logs if e["event"] == "progress"] == [300]


def render(display: TerminalProgress) -> str:
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(display.progress_bar.get_renderable())
    return re.sub(r"\s+", " ", out.getvalue())


def test_the_terminal_display_shows_each_stream_as_it_goes() -> None:
    clock = Clock()
    display = TerminalProgress(Console(file=io.StringIO()), monotonic=clock)
    display.progress(at(0))
    display.progress(at(0, pending=None, stream="deals", run_id=2))
    clock.now += 10
    display.progress(at(12_200))
    display.progress(at(40, pending=None, stream="deals", run_id=2))
    text = render(display)
    assert "CRMExport contacts" in text and "CRMExport_ExportError deals" in text
    assert "12,200 of 50,000" in text and "37,800 pending" in text
    assert "1,220.0 records/s" in text and "ETA 0:00:31" in text
    assert " 40 " in text and "4.0 records/s" in text and "ETA -" in text

    display.progress(at(50_000, finished=True))
    assert "50,000 of 50,000" in render(display) and "completed" in render(display)
