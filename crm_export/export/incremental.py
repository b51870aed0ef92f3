"""CRMExport for one stream: everything new or changed since its position, in order.

First a resync if one was asked for (the stream starts over, every row sent again), then
the record the stream is paused at (from its current source row), then rows that committed
late behind the position (the xmin rescan of PostgreSQL tables, and the lookback window),
then the rows after it, read a page of many batches at a time and sent batch by batch. Rows
whose payload Salesforce already holds are not sent. Each batch's outcome is acknowledged
(position, ExportErrors, fingerprints, counters) in one transaction, in order: in pause mode
before the next batch is sent; in skip mode with ``max_in_flight`` calls out, once it and
every batch before it are answered (in_flight.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import structlog

from crm_export.mapping import NULL_KEY
from crm_export.ports import BatchAck, PausedRecord, Position, SourceRow
from crm_export.retry import StopRequested

from . import bulk
from .in_flight import InFlight
from .lookback import window_start
from .outcome import BatchOutcome, FloodGuard, Rejected, null_order_error
from .stream_run import Spent, StreamRun

log = structlog.get_logger("crm_export.export")

# Equal to no source row's order value: a deleted paused row is never stepped over.
_GONE = object()


def export(run: StreamRun) -> None:
    plan, store = run.plan, run.store
    # Taken before anything is read: whatever commits after it is found again next run.
    snapshot = store.source_snapshot(plan.source)
    state = store.load_state(plan.name)
    if state.resync_requested:
        _resync(run)
        state = store.load_state(plan.name)
    position = state.position
    # A released record that a fix moved later in the order is met again below; it was
    # just sent as it is now, so it is stepped over rather than sent twice.
    sent: tuple[str, Any] | None = None
    if state.paused is not None:
        released = _retry_paused(run, state.paused, position)
        if released is None:
            return
        sent = (plan.record_key(released), released.order_value)
        position = store.load_state(plan.name).position
    late_from = state.source_snapshot
    if late_from and position and _send_late_rows(run, late_from, position):
        return
    if position is not None and _send_window(run, position):
        return
    if snapshot is not None:
        run.ack(BatchAck(plan.name, run.result.run_id, source_snapshot=snapshot))
    if position is not None and position.order_value is not None:
        _report_null_order_rows(run)
    # A large backlog in skip mode goes through Bulk API 2.0 first (and jobs in flight).
    position = bulk.send_backlog(run, position)
    flood = FloodGuard(run.policy.max_identical_errors)

    def going(rows: list[SourceRow]) -> list[SourceRow]:
        return [r for r in rows if (plan.record_key(r), r.order_value) != sent]

    # Pause mode needs each answer before the next send: nothing after a failing record
    # may be written.
    size = 1 if plan.pause_on_error else run.policy.max_in_flight
    if size > 1:
        _send_in_flight(run, _batches(run, position), going, flood, size)
    else:
        for rows in _batches(run, position):
            if run.should_stop():
                break
            outcome = run.send(going(rows))
            run.acknowledge(rows, outcome)
            if outcome.halt is not None:
                return
            flood.observe(outcome, rows)
    if run.should_stop():
        raise StopRequested()


def _batches(run: StreamRun, position: Position | None) -> Iterator[list[SourceRow]]:
    """The rows after ``position``, batch by batch, read a page of many batches per query
    (``ExportPolicy.page_rows``): a source without an index on (order_by, key) scans and
    sorts once per page, not once per call. One page is held at a time."""
    plan, batch_size, page_rows = run.plan, run.policy.batch_size, run.policy.page_rows()
    while not run.should_stop():
        page = run.store.read_batch(plan.source, position, page_rows)
        for start in range(0, len(page), batch_size):
            yield page[start : start + batch_size]
        if len(page) < page_rows:
            return
        position = page[-1].position


def _send_in_flight(
    run: StreamRun,
    batches: Iterator[list[SourceRow]],
    going: Callable[[list[SourceRow]], list[SourceRow]],
    flood: FloodGuard,
    size: int,
) -> None:
    """Skip mode with up to ``size`` calls in flight (see in_flight.py): each batch is
    acknowledged in order, once it and those before it are answered. On a stop request no
    batch is sent after the current one, and those in flight are acknowledged."""

    def acknowledge(rows: list[SourceRow], outcome: BatchOutcome, spent: Spent) -> None:
        run.acknowledge(rows, outcome, spent=spent)

    window = InFlight(run, size, acknowledge, lambda rows, outcome: flood.observe(outcome, rows))
    try:
        for rows in batches:
            if run.should_stop():
                break
            window.send(rows, going(rows))
        window.finish()
    finally:
        window.close()


def _resync(run: StreamRun) -> None:
    """`crm-export stream resync`: forget what Salesforce holds and start from the first row.

    One transaction: the fingerprints, the position and the request go together, so a crash
    either leaves the request for the next run or has done all of it. A pause stays: the
    paused record is still retried first, and nothing ordered after it goes before it.
    """
    plan = run.plan
    log.info(
        "stream_resync",
        stream=plan.name,
        detail="every row is read and sent again, from the first one",
    )
    run.ack(
        BatchAck(
            plan.name,
            run.result.run_id,
            position=None,
            forget_fingerprints=True,
            resync_requested=False,
        )
    )


def _send_late_rows(run: StreamRun, snapshot: str, position: Position) -> bool:
    """Send rows that committed behind the position since ``snapshot``; True if halted."""
    plan, store, limit = run.plan, run.store, run.policy.batch_size
    return _send_behind(
        run, lambda after: store.read_late(plan.source, snapshot, position, after, limit), "xmin"
    )


def _send_window(run: StreamRun, position: Position) -> bool:
    """Re-read the lookback window behind the position; send what changed. True if halted."""
    plan, store, limit = run.plan, run.store, run.policy.batch_size
    since = window_start(position.order_value, plan.lookback, plan.source.order_by)
    if since is None:
        return False
    return _send_behind(
        run,
        lambda after: store.read_window(plan.source, since, position, after, limit),
        "lookback",
    )


def _send_behind(
    run: StreamRun, read: Callable[[Position | None], list[SourceRow]], found_by: str
) -> bool:
    """Send the rows ``read`` pages through, which sort behind the position; True if halted.

    The position does not move: these rows sort before it. They go in their own order, and
    a record error in pause mode pauses the stream at that record as anywhere else. Rows
    whose payload Salesforce already holds cost nothing; those sent are counted as late.
    """
    plan = run.plan
    after: Position | None = None
    while True:
        rows = read(after)
        if not rows:
            return False
        outcome = run.send(rows)
        ack = run.acknowledge(rows, outcome, move_position=False, late=True)
        if ack.counts.late:
            log.info(
                "late_rows",
                stream=plan.name,
                count=ack.counts.late,
                read=len(rows),
                found_by=found_by,
                detail="committed behind the position, changed; sent now",
            )
        if outcome.halt is not None:
            return True
        after = rows[-1].position


def _report_null_order_rows(run: StreamRun) -> None:
    """Record the rows whose order_by is NULL, which sort before the position.

    The position moved past them (or they were written later), so the reading loop will
    never meet them: without this they would be invisible for good. They cannot be sent
    (they have no place in the order) and, having no place in it, never pause a stream.
    """
    plan = run.plan
    rows = run.store.read_batch(plan.source, None, run.policy.batch_size)
    unordered = [r for r in rows if r.order_value is None]
    if unordered:
        outcome = BatchOutcome(failures=[Rejected(r, null_order_error(plan)) for r in unordered])
        run.acknowledge(unordered, outcome, move_position=False)


def _find_null_key_row(run: StreamRun, position: Position | None, name: str) -> SourceRow | None:
    """The row a stream paused at for its NULL key, if its key is still NULL.

    It has no key to look it up by; it was the first row after the position, and NULL
    keys sort first among rows with the same order value, so it is in the next batch.
    """
    plan = run.plan
    for row in run.store.read_batch(plan.source, position, run.policy.batch_size):
        if row.key is None and plan.record_key(row) == name:
            return row
    return None


def _retry_paused(run: StreamRun, paused: PausedRecord, position: Position | None) -> Any:
    """Retry the record the stream is paused at, from its current source row.

    Returns None while the stream stays paused; otherwise the row that released it (sent,
    or skipped because pause mode is now off), or a stand-in when the row is gone.
    """
    plan, run_id = run.plan, run.result.run_id
    if paused.error_code == NULL_KEY:
        row = _find_null_key_row(run, position, paused.record_key)
        if row is None:
            return _release_fixed_null_key(run, paused)
    else:
        row = run.store.read_by_keys(plan.source, [paused.record_key]).get(paused.record_key)
    if row is None:
        log.warning(
            "paused_record_deleted",
            stream=plan.name,
            key=paused.record_key,
            detail="its source row is gone; the pause is released",
        )
        run.ack(BatchAck(plan.name, run_id, pause=None, source_deleted_keys=[paused.record_key]))
        return SourceRow(paused.record_key, _GONE, {})
    # Always sent: only Salesforce's answer may release a pause, never a fingerprint.
    outcome = run.send([row], compare=False)
    failure = outcome.halt or (outcome.failures[0] if outcome.failures else None)
    if failure is not None and plan.pause_on_error:
        # Still failing: the pause goes on, from the day it began.
        run.acknowledge(
            [row], BatchOutcome(halt=failure), move_position=False, paused_since=paused.since
        )
        return None
    # Released: the record went through, or pause mode was switched off and it is skipped.
    # If it is still the very next row, the position steps over it.
    run.acknowledge(
        [row], outcome, move_position=False, pause=None, position=run.step_over(position, row)
    )
    log.info(
        "pause_released",
        stream=plan.name,
        key=paused.record_key,
        reason="exported" if failure is None else "pause_on_error is off; record skipped",
    )
    return row


def _release_fixed_null_key(run: StreamRun, paused: PausedRecord) -> SourceRow:
    """The row paused for its NULL key has a key now (or is gone): release the pause.

    The position stays put: the row, under its new key, is still ahead of it (a key sorts
    after NULL at the same order value, and a new order value sorts later), so the reading
    loop sends it next, in order.
    """
    log.info(
        "pause_released",
        stream=run.plan.name,
        key=paused.record_key,
        reason="no row with a NULL key is left there; it was given a key or deleted",
    )
    run.ack(
        BatchAck(run.plan.name, run.result.run_id, pause=None, resolved_keys=[paused.record_key])
    )
    return SourceRow(paused.record_key, _GONE, {})
