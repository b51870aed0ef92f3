"""One run of one stream: what both jobs share while they work on it.

It looks up the fingerprints of each batch before it is sent (one query per batch), so that
rows Salesforce already holds are not sent again; acknowledges through the store (adding the
API calls and logins spent since the last acknowledgement, so a crash never counts a call
twice); keeps the run's counters; logs each record failure once; and reports its progress
to an observer after every acknowledgement (``StreamProgress``: plain values; what shows
them lives outside the core).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import structlog

from crm_export.ports import (
    UNCHANGED,
    BatchAck,
    BulkSink,
    Position,
    RunOutcome,
    Sink,
    SourceRow,
    Store,
)

from .outcome import BatchOutcome
from .plan import ExportPolicy, StreamPlan, StreamResult
from .sending import BatchSender

log = structlog.get_logger("crm_export.export")


@dataclass(frozen=True)
class StreamProgress:
    """Where one run of one stream stands, for whoever watches it.

    Reported once at the start (nothing done yet), after every acknowledged batch, and once
    at the end (``finished``, with the run's outcome). ``result`` is a copy of the counters
    at that moment. ``pending`` is how many source rows were ahead of the run when it began
    (one count, at the start), or None when not counted (the re-export works off
    ExportErrors, not a range of rows).
    """

    result: StreamResult
    pending: int | None
    finished: bool = False


ProgressObserver = Callable[[StreamProgress], None]

# (charged API calls, logins)
Spent = tuple[int, int]


@dataclass(frozen=True)
class Answer:
    """How a batch sent on another thread ended: its outcome, or the error it raised."""

    outcome: BatchOutcome | None
    error: BaseException | None
    spent: Spent


@dataclass
class StreamRun:
    plan: StreamPlan
    result: StreamResult
    store: Store
    sink: Sink
    sender: BatchSender
    policy: ExportPolicy
    now: Callable[[], datetime]
    should_stop: Callable[[], bool]
    # The stream thread's own (calls, logins) at the latest acknowledgement (Sink.thread_counts).
    calls_acked: int = 0
    on_progress: ProgressObserver | None = None
    pending: int | None = None
    logins_acked: int = 0
    # Off for the re-export and `--resend-all`: every row read is sent, whatever Salesforce
    # last accepted (the fingerprints are still replaced as records are accepted).
    compare: bool = True
    # Bulk API 2.0 ingest, where the sink offers it (see bulk.py); None: Collections only.
    bulk: BulkSink | None = None
    # Calls and logins that batches sent on other threads spent and no acknowledgement
    # carried (a batch that failed, those in flight behind it): finish_run adds them.
    unacked: Spent = (0, 0)

    def send(
        self, rows: Sequence[SourceRow], *, all_or_none: bool | None = None, compare: bool = True
    ) -> BatchOutcome:
        """Send ``rows``, except those whose payload Salesforce already holds (unless
        ``compare`` is off for this call or this run)."""
        known = self.known(rows) if compare else {}
        return self.sender.send(self.plan, rows, all_or_none=all_or_none, known=known)

    def known(self, rows: Sequence[SourceRow]) -> dict[str, bytes]:
        """The fingerprints of what Salesforce last accepted for ``rows`` (one query)."""
        if not self.compare:
            return {}
        keys = [r.record_key for r in rows if r.key is not None]
        return self.store.known_fingerprints(self.plan.name, keys) if keys else {}

    def send_measured(self, rows: Sequence[SourceRow], known: dict[str, bytes]) -> Answer:
        """``send`` for a batch in flight, on a thread of its own: its outcome (or what it
        raised) and exactly the calls and logins it spent, read on that thread."""
        calls, logins = self.sink.thread_counts()
        outcome: BatchOutcome | None = None
        error: BaseException | None = None
        try:
            outcome = self.sender.send(self.plan, rows, known=known)
        except BaseException as exc:  # handed to the stream's thread, which raises it
            error = exc
        now_calls, now_logins = self.sink.thread_counts()
        return Answer(outcome, error, (now_calls - calls, now_logins - logins))

    def spent_unacked(self, spent: Spent) -> None:
        self.unacked = (self.unacked[0] + spent[0], self.unacked[1] + spent[1])

    def ack(self, ack: BatchAck, spent: Spent = (0, 0)) -> None:
        """Commit ``ack`` with the calls spent since the latest one on this thread, plus
        ``spent`` (those of the batch, when it was sent on another thread)."""
        calls, logins = self.sink.thread_counts()
        ack.counts = replace(
            ack.counts,
            api_calls=calls - self.calls_acked + spent[0],
            logins=logins - self.logins_acked + spent[1],
        )
        self.store.acknowledge(ack)
        # Only once committed: a failed commit leaves them to finish_run.
        self.calls_acked, self.logins_acked = calls, logins
        self.result.counts += ack.counts
        self.report()

    def report(self, *, finished: bool = False) -> None:
        """Tell the observer where the run stands. Its failure is logged and ignored: the
        batch is already committed, and a display must never fail an export."""
        if self.on_progress is None:
            return
        try:
            self.on_progress(StreamProgress(replace(self.result), self.pending, finished))
        except Exception:
            log.exception("progress_observer_failed", stream=self.plan.name)

    def acknowledge(
        self,
        rows: Sequence[SourceRow],
        outcome: BatchOutcome,
        *,
        move_position: bool = True,
        paused_since: datetime | None = None,
        late: bool = False,
        spent: Spent = (0, 0),
        **changes: Any,
    ) -> BatchAck:
        """Commit one batch's outcome (plus ``changes`` to the ack: position, pause...).

        ``late``: the rows sort behind the position (late commits, the lookback); those sent
        are counted as found late.
        """
        self.log_failures(outcome)
        ack = outcome.to_ack(
            self.plan,
            self.result.run_id,
            rows,
            self.now(),
            move_position=move_position,
            paused_since=paused_since,
        )
        if late:
            c = ack.counts
            ack.counts = replace(c, late=c.exported + c.failed + c.paused)
        for name, value in changes.items():
            setattr(ack, name, value)
        self.ack(ack, spent)
        if outcome.halt is not None and ack.pause is not None and ack.pause is not UNCHANGED:
            self.result.outcome = RunOutcome.PAUSED
            self.result.paused = ack.pause
        return ack

    def log_failures(self, outcome: BatchOutcome) -> None:
        rejected = list(outcome.failures)
        if outcome.halt is not None:
            rejected.append(outcome.halt)
        for failure in rejected:
            error = failure.error
            log.warning(
                "record_failed",
                stream=self.plan.name,
                key=self.plan.record_key(failure.row),
                code=error.code,
                message=error.message,
                fields=list(error.fields),
            )

    def step_over(self, position: Position | None, row: SourceRow) -> Any:
        """``row``'s position if it is the very next row after ``position``, else UNCHANGED."""
        following = self.store.read_batch(self.plan.source, position, 1)
        if following and self.plan.record_key(following[0]) == self.plan.record_key(row):
            return row.position
        return UNCHANGED
