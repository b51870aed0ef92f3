"""The export core: batching, outcome classification, pause and skip decisions.

Pure policy. It reads and acknowledges through a ``Store`` and writes through a ``Sink``; it
never sees SQL or HTTP. Each batch's outcome is decided in full before the batch is
acknowledged, and the acknowledgement (position, ExportErrors, counters) is one transaction,
so a crash at any instant loses nothing and counts nothing twice: whatever was sent but not
acknowledged is sent again, and upsert by external ID makes the resend harmless.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from crm_export.classify import ErrorClass, classify_record_error
from crm_export.errors import CrmExportError, SalesforceConfigurationError, TerminalError
from crm_export.mapping import (
    NULL_KEY,
    NULL_ORDER_BY,
    FieldMap,
    MappingError,
    build_payload,
)
from crm_export.ports import (
    UNCHANGED,
    BatchAck,
    JobId,
    PausedRecord,
    Position,
    RecordError,
    RecordFailure,
    RunOutcome,
    Sink,
    SourceRow,
    Store,
    StreamSource,
    UpsertResult,
    record_key_text,
)
from crm_export.retry import Backoff, Clock, StopRequested

log = structlog.get_logger("crm_export.export")

# How many source rows one page of the re-export's search for NULL-key rows reads.
NULL_KEY_SCAN_PAGE = 1000


def null_key_name(key_column: str, order_by: str, order_value: Any) -> str:
    """The ExportErrors.record_key of a row whose key is NULL: it has no key to be named by,
    so it is named by where it sits in the order, in words an operator can turn into SQL.

    Rows are told apart from real keys by their error code (CRM_EXPORT_NULL_KEY), never by
    this text; the text only has to lead a person to the row.
    """
    if order_value is None:
        return f"({key_column} is NULL; {order_by} is NULL)"
    return f"({key_column} is NULL; {order_by} = {record_key_text(order_value)})"


@dataclass(frozen=True)
class StreamPlan:
    """One configured stream, as the core needs it."""

    name: str
    fmap: FieldMap
    source: StreamSource
    pause_on_error: bool

    def record_key(self, row: SourceRow) -> str:
        """What ExportErrors, the pause and the logs call ``row``."""
        if row.key is None:
            return null_key_name(self.source.key, self.source.order_by, row.order_value)
        return row.record_key


@dataclass(frozen=True)
class ExportPolicy:
    batch_size: int = 200
    record_retry: Backoff = field(
        default_factory=lambda: Backoff(max_attempts=5, max_elapsed=120.0, initial=0.5, cap=10.0)
    )
    max_identical_errors: int = 50


@dataclass
class StreamResult:
    job_id: str
    stream: str
    run_id: int
    outcome: RunOutcome = RunOutcome.RUNNING
    read: int = 0
    exported: int = 0
    failed: int = 0
    skipped: int = 0
    api_calls: int = 0
    error: str | None = None
    paused: PausedRecord | None = None

    def summary(self) -> str:
        text = (
            f"{self.job_id} {self.stream}: {self.outcome} - read {self.read}, "
            f"exported {self.exported}, failed {self.failed}, skipped {self.skipped}, "
            f"API calls {self.api_calls}"
        )
        if self.paused is not None:
            text += (
                f"; paused at record {self.paused.record_key} "
                f"({self.paused.error_code}: {self.paused.error_message})"
            )
        if self.error:
            text += f"; error: {self.error}"
        return text


@dataclass
class _Prepared:
    row: SourceRow
    payload: dict[str, Any]


@dataclass
class _Streak:
    """Consecutive identical record errors in one run: a flood means configuration."""

    signature: tuple[str, tuple[str, ...]] | None = None
    count: int = 0
    last: RecordError | None = None

    def add(self, error: RecordError) -> int:
        sig = (error.code, error.fields)
        self.count = self.count + 1 if sig == self.signature else 1
        self.signature, self.last = sig, error
        return self.count

    def reset(self) -> None:
        self.signature, self.count, self.last = None, 0, None


@dataclass
class _BatchOutcome:
    exported: list[SourceRow] = field(default_factory=list)
    failures: list[tuple[SourceRow, RecordError, dict[str, Any] | None]] = field(
        default_factory=list
    )
    # Pause mode: the record the stream halts at (with its error), if any.
    halt: tuple[SourceRow, RecordError, dict[str, Any] | None] | None = None
    # Rows not sent because a later row of the same batch has the same key.
    superseded: list[SourceRow] = field(default_factory=list)


class Exporter:
    def __init__(
        self,
        store: Store,
        sink: Sink,
        policy: ExportPolicy,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.sink = sink
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()
        self.now = now
        self.should_stop = should_stop
        self._calls_acked = 0

    # ---- CRMExport ---------------------------------------------------------------------

    def export_stream(self, plan: StreamPlan) -> StreamResult:
        return self._run(JobId.EXPORT, plan, self._export)

    def _export(self, plan: StreamPlan, result: StreamResult) -> None:
        # Taken before anything is read: whatever commits after it is found again next run.
        snapshot = self.store.source_snapshot(plan.source)
        state = self.store.load_state(plan.name)
        position = state.position
        # A released record that a fix moved later in the order is met again below; it was
        # just sent as it is now, so it is stepped over rather than sent twice.
        sent: tuple[str, Any] | None = None
        if state.paused is not None:
            released = self._retry_paused(plan, result, state.paused, position)
            if released is None:
                return
            sent = (plan.record_key(released), released.order_value)
            position = self.store.load_state(plan.name).position
        late_from = state.source_snapshot
        if late_from and position and self._send_late_rows(plan, result, late_from, position):
            return
        if snapshot is not None:
            self._ack(result, BatchAck(plan.name, result.run_id, source_snapshot=snapshot))
        if position is not None and position.order_value is not None:
            self._report_null_order_rows(plan, result)
        streak = _Streak()
        while not self.should_stop():
            rows = self.store.read_batch(plan.source, position, self.policy.batch_size)
            if not rows:
                break
            outcome = self._send_batch(
                plan, [r for r in rows if (plan.record_key(r), r.order_value) != sent]
            )
            halted = self._acknowledge(plan, result, rows, outcome)
            if halted:
                return
            self._check_flood(plan, streak, outcome)
            position = rows[-1].position
            if len(rows) < self.policy.batch_size:
                break
        if self.should_stop():
            raise StopRequested()

    def _send_late_rows(
        self, plan: StreamPlan, result: StreamResult, snapshot: str, position: Position
    ) -> bool:
        """Send rows that committed behind the position since ``snapshot``; True if halted.

        The position does not move: these rows sort before it. They go in their own order,
        and a record error in pause mode pauses the stream at that record as anywhere else.
        """
        after: Position | None = None
        while True:
            rows = self.store.read_late(
                plan.source, snapshot, position, after, self.policy.batch_size
            )
            if not rows:
                return False
            log.info(
                "late_rows",
                stream=plan.name,
                count=len(rows),
                detail="committed behind the position; sending them now",
            )
            outcome = self._send_batch(plan, rows)
            if self._acknowledge(plan, result, rows, outcome, move_position=False):
                return True
            after = rows[-1].position

    def _report_null_order_rows(self, plan: StreamPlan, result: StreamResult) -> None:
        """Record the rows whose order_by is NULL, which sort before the position.

        The position moved past them (or they were written later), so the reading loop will
        never meet them: without this they would be invisible for good. They cannot be sent
        (they have no place in the order) and, having no place in it, never pause a stream.
        """
        rows = self.store.read_batch(plan.source, None, self.policy.batch_size)
        unordered = [r for r in rows if r.order_value is None]
        if not unordered:
            return
        outcome = _BatchOutcome(failures=[(r, _null_order_error(plan), None) for r in unordered])
        self._acknowledge(plan, result, unordered, outcome, move_position=False)

    def _find_null_key_row(
        self, plan: StreamPlan, position: Position | None, name: str
    ) -> SourceRow | None:
        """The row a stream paused at for its NULL key, if its key is still NULL.

        It has no key to look it up by; it was the first row after the position, and NULL
        keys sort first among rows with the same order value, so it is in the next batch.
        """
        for row in self.store.read_batch(plan.source, position, self.policy.batch_size):
            if row.key is None and plan.record_key(row) == name:
                return row
        return None

    def _retry_paused(
        self,
        plan: StreamPlan,
        result: StreamResult,
        paused: PausedRecord,
        position: Position | None,
    ) -> SourceRow | None:
        """Retry the record the stream is paused at, from its current source row.

        Returns None while the stream stays paused; otherwise the row that released it (sent,
        or skipped because pause mode is now off), or a stand-in when the row is gone.
        """
        if paused.error_code == NULL_KEY:
            row = self._find_null_key_row(plan, position, paused.record_key)
            if row is None:
                return self._release_fixed_null_key(plan, result, paused)
        else:
            row = self.store.read_by_keys(plan.source, [paused.record_key]).get(paused.record_key)
        if row is None:
            log.warning(
                "paused_record_deleted",
                stream=plan.name,
                key=paused.record_key,
                detail="its source row is gone; the pause is released",
            )
            self._ack(
                result,
                BatchAck(
                    plan.name, result.run_id, pause=None, source_deleted_keys=[paused.record_key]
                ),
            )
            return SourceRow(paused.record_key, _GONE, {})
        outcome = self._send_batch(plan, [row])
        failure = outcome.halt or (outcome.failures[0] if outcome.failures else None)
        if failure is not None and plan.pause_on_error:
            _, error, payload = failure
            self._record_failure(plan, row, error)
            self._ack(
                result,
                BatchAck(
                    plan.name,
                    result.run_id,
                    read=1,
                    failed=1,
                    pause=PausedRecord(paused.record_key, paused.since, error.code, error.message),
                    failures=[self._failure(plan, row, error, payload)],
                ),
            )
            result.paused = self.store.load_state(plan.name).paused
            result.outcome = RunOutcome.PAUSED
            return None
        # Released: the record went through, or pause mode was switched off and it is skipped.
        # If it is still the very next row, the position steps over it.
        ack = BatchAck(
            plan.name,
            result.run_id,
            pause=None,
            read=1,
            position=self._step_over(plan, position, row),
        )
        if failure is None:
            ack.exported, ack.resolved_keys = 1, [row.record_key]
        else:
            _, error, payload = failure
            self._record_failure(plan, row, error)
            ack.failed = ack.skipped = 1
            ack.failures = [self._failure(plan, row, error, payload)]
        log.info(
            "pause_released",
            stream=plan.name,
            key=paused.record_key,
            reason="exported" if failure is None else "pause_on_error is off; record skipped",
        )
        self._ack(result, ack)
        return row

    def _release_fixed_null_key(
        self, plan: StreamPlan, result: StreamResult, paused: PausedRecord
    ) -> SourceRow:
        """The row paused for its NULL key has a key now (or is gone): release the pause.

        The position stays put: the row, under its new key, is still ahead of it (a key sorts
        after NULL at the same order value, and a new order value sorts later), so the reading
        loop sends it next, in order.
        """
        log.info(
            "pause_released",
            stream=plan.name,
            key=paused.record_key,
            reason="no row with a NULL key is left there; it was given a key or deleted",
        )
        self._ack(
            result,
            BatchAck(plan.name, result.run_id, pause=None, resolved_keys=[paused.record_key]),
        )
        return SourceRow(paused.record_key, _GONE, {})

    def _step_over(self, plan: StreamPlan, position: Position | None, row: SourceRow) -> Any:
        """``row``'s position if it is the very next row after ``position``, else UNCHANGED."""
        following = self.store.read_batch(plan.source, position, 1)
        if following and plan.record_key(following[0]) == plan.record_key(row):
            return row.position
        return UNCHANGED

    # ---- CRMExport_ExportError -----------------------------------------------------------

    def reexport_stream(self, plan: StreamPlan) -> StreamResult:
        return self._run(JobId.REEXPORT, plan, self._reexport)

    def _reexport(self, plan: StreamPlan, result: StreamResult) -> None:
        state = self.store.load_state(plan.name)
        paused_key = state.paused.record_key if state.paused else None
        after_id = 0
        while not self.should_stop():
            errors = self.store.open_errors(plan.name, after_id, self.policy.batch_size)
            if not errors:
                return
            after_id = errors[-1].id
            keys = [e.record_key for e in errors if e.error_code != NULL_KEY]
            found = self.store.read_by_keys(plan.source, keys)
            gone = [k for k in keys if k not in found]
            rows = [found[k] for k in keys if k in found]
            names = [e.record_key for e in errors if e.error_code == NULL_KEY]
            still_null, fixed = self._search_null_keys(plan, names) if names else ([], [])
            outcome = _BatchOutcome()
            if rows or still_null:
                outcome = self._send_batch(plan, rows + still_null, all_or_none=False)
            ack = BatchAck(
                plan.name,
                result.run_id,
                read=len(rows) + len(still_null),
                exported=len(outcome.exported),
                failed=len(outcome.failures),
                source_deleted_keys=gone,
                resolved_keys=[r.record_key for r in outcome.exported] + fixed,
                failures=[self._failure(plan, r, e, p) for r, e, p in outcome.failures],
            )
            for row, error, _ in outcome.failures:
                self._record_failure(plan, row, error)
            released = paused_key is not None and (
                paused_key in gone or paused_key in ack.resolved_keys
            )
            if released:
                ack.pause = None
                ack.position = (
                    self._step_over(plan, state.position, found[paused_key])
                    if paused_key in found
                    else UNCHANGED
                )
                log.info("pause_released", stream=plan.name, key=paused_key)
                paused_key = None
            self._ack(result, ack)
        raise StopRequested()

    def _search_null_keys(
        self, plan: StreamPlan, names: Sequence[str]
    ) -> tuple[list[SourceRow], list[str]]:
        """Rows still named by these NULL-key errors (one each), and the names with no such
        row left: those rows were given a key or deleted.

        A NULL key cannot be looked up, so this reads the whole source (only while such
        errors are open). A row given a key but no new order value sits behind the position,
        where the reading loop will not meet it again, so the rows that now hold its place in
        the order are sent too: the one that was fixed is among them, and the others are
        sent again harmlessly (upsert by external ID).
        """
        wanted = set(names)
        still: dict[str, SourceRow] = {}
        by_place: dict[str, list[SourceRow]] = {}
        after: Position | None = None
        while not self.should_stop():
            page = self.store.read_batch(plan.source, after, NULL_KEY_SCAN_PAGE)
            for row in page:
                place = null_key_name(plan.source.key, plan.source.order_by, row.order_value)
                if place not in wanted:
                    continue
                if row.key is None:
                    still.setdefault(place, row)
                else:
                    by_place.setdefault(place, []).append(row)
            if len(page) < NULL_KEY_SCAN_PAGE:
                break
            after = page[-1].position
        if self.should_stop():
            raise StopRequested()
        fixed = [n for n in dict.fromkeys(names) if n not in still]
        refill = [row for name in fixed for row in by_place.get(name, [])]
        return list(still.values()) + refill, fixed

    # ---- one batch -----------------------------------------------------------------------

    def _send_batch(
        self, plan: StreamPlan, rows: Sequence[SourceRow], *, all_or_none: bool | None = None
    ) -> _BatchOutcome:
        """Send ``rows`` and decide every record's outcome; nothing is acknowledged here."""
        pause = plan.pause_on_error if all_or_none is None else all_or_none
        outcome = _BatchOutcome()
        prepared: list[_Prepared] = []
        keys: set[str] = set()
        for row in rows:
            if row.key is not None and row.order_value is None:
                # No place in the order, so nothing waits behind it: it never pauses.
                outcome.failures.append((row, _null_order_error(plan), None))
                continue
            try:
                item = _Prepared(row, build_payload(plan.fmap, row))
            except MappingError as exc:
                if pause:
                    # Nothing ordered after an unsendable record may go out.
                    outcome.halt = (row, exc.error, None)
                    break
                outcome.failures.append((row, exc.error, None))
                continue
            if row.record_key in keys:
                self._supersede(plan, prepared, item, outcome)
            keys.add(row.record_key)
            prepared.append(item)
        if pause:
            self._send_in_order(plan, prepared, outcome)
        else:
            self._send_independently(plan, prepared, outcome)
        return outcome

    def _supersede(
        self, plan: StreamPlan, prepared: list[_Prepared], item: _Prepared, outcome: _BatchOutcome
    ) -> None:
        """Drop an earlier row of the batch with ``item``'s key: the later row wins.

        Two source rows with one key are one Salesforce record, and a request holding the
        key twice is refused for both. Sent in order, the later row would overwrite the
        earlier anyway (as it does when they fall in different batches), so only it goes.
        """
        key = item.row.record_key
        for index, earlier in enumerate(prepared):
            if earlier.row.record_key == key:
                del prepared[index]
                outcome.superseded.append(earlier.row)
                log.warning(
                    "duplicate_key",
                    stream=plan.name,
                    key=key,
                    detail=(
                        f"more than one source row has {plan.source.key} = {key}; the one "
                        f"with {plan.source.order_by} = {record_key_text(item.row.order_value)}"
                        f" is sent, the one with {plan.source.order_by} = "
                        f"{record_key_text(earlier.row.order_value)} is not. Make "
                        f"{plan.source.key} unique."
                    ),
                )
                return

    def _send_in_order(
        self, plan: StreamPlan, prepared: list[_Prepared], outcome: _BatchOutcome
    ) -> None:
        """allOrNone=true, cutting the batch before the first record at fault.

        With allOrNone nothing commits when any record fails, so resending only the prefix
        before the culprit is how a batch is written up to, and never past, that record.
        A record that is only locked (a transient fault) goes the same way: the records
        before it are sent first, then it and the rest. Resending the whole batch instead
        would meet a new lock somewhere in most calls once locks are frequent.
        """
        remaining = list(prepared)  # not yet written, in order
        send = len(remaining)  # how many of them the next call carries
        tries: dict[int, int] = {}
        while send:
            pending = remaining[:send]
            results = self._upsert(plan, pending, all_or_none=True)
            if all(r.success for r in results):
                outcome.exported.extend(p.row for p in pending)
                remaining = remaining[send:]
                send = len(remaining)
                continue
            culprit = _first_culprit(results)
            if culprit is None:
                # Everything was rolled back but nobody is to blame: retry the same request.
                culprit_error = RecordError("ALL_OR_NONE_OPERATION_ROLLED_BACK", "rolled back")
                index = 0
            else:
                index, culprit_error = culprit
            cls = classify_record_error(culprit_error)
            if cls is ErrorClass.CONFIGURATION:
                raise _configuration(plan, culprit_error)
            if cls is ErrorClass.TRANSIENT:
                item = pending[index]
                attempt = tries[id(item)] = tries.get(id(item), 0) + 1
                if attempt < self.policy.record_retry.max_attempts:
                    if index == 0:
                        self._record_backoff(plan, attempt, item.row, culprit_error)
                    # Otherwise the call for the records before it stands in for the wait.
                    send = index or send
                    continue
            halted = pending[index]
            outcome.halt = (halted.row, culprit_error, halted.payload)
            remaining = remaining[:index]
            send = index

    def _send_independently(
        self, plan: StreamPlan, prepared: list[_Prepared], outcome: _BatchOutcome
    ) -> None:
        """allOrNone=false: each record succeeds or fails alone; transient ones are resent."""
        pending = prepared
        attempt = 0
        while pending:
            attempt += 1
            results = self._upsert(plan, pending, all_or_none=False)
            retry: list[_Prepared] = []
            retry_error: RecordError | None = None
            for item, res in zip(pending, results, strict=True):
                if res.success:
                    outcome.exported.append(item.row)
                    continue
                error = res.errors[0] if res.errors else RecordError("UNKNOWN", "no error given")
                cls = classify_record_error(error)
                if cls is ErrorClass.CONFIGURATION:
                    raise _configuration(plan, error)
                if cls is ErrorClass.TRANSIENT and attempt < self.policy.record_retry.max_attempts:
                    retry.append(item)
                    retry_error = retry_error or error
                    continue
                outcome.failures.append((item.row, error, item.payload))
            if retry and retry_error is not None:
                self._record_backoff(plan, attempt, retry[0].row, retry_error)
            pending = retry

    def _upsert(
        self, plan: StreamPlan, items: Sequence[_Prepared], *, all_or_none: bool
    ) -> list[UpsertResult]:
        results = self.sink.upsert(
            plan.fmap.sobject,
            plan.fmap.external_id_field,
            [p.payload for p in items],
            all_or_none=all_or_none,
        )
        if len(results) != len(items):
            raise SalesforceConfigurationError(
                f"Salesforce answered {len(results)} results for {len(items)} records"
            )
        return results

    def _record_backoff(
        self, plan: StreamPlan, attempt: int, row: SourceRow, error: RecordError
    ) -> None:
        wait = self.policy.record_retry.delay(attempt, self.rng)
        log.info(
            "record_retry",
            stream=plan.name,
            key=plan.record_key(row),
            code=error.code,
            attempt=attempt,
            wait_seconds=round(wait, 3),
        )
        self.clock.sleep(wait)

    # ---- acknowledging -------------------------------------------------------------------

    def _acknowledge(
        self,
        plan: StreamPlan,
        result: StreamResult,
        rows: Sequence[SourceRow],
        outcome: _BatchOutcome,
        *,
        move_position: bool = True,
    ) -> bool:
        """Commit one batch's outcome; True when the stream halted at a record."""
        ack = BatchAck(
            plan.name,
            result.run_id,
            read=len(rows),
            exported=len(outcome.exported),
            resolved_keys=[r.record_key for r in outcome.exported],
        )
        for row, error, payload in outcome.failures:
            self._record_failure(plan, row, error)
            ack.failures.append(self._failure(plan, row, error, payload))
        ack.failed = len(outcome.failures)
        ack.skipped = len(outcome.failures) + len(outcome.superseded)
        if outcome.halt is not None:
            row, error, payload = outcome.halt
            self._record_failure(plan, row, error)
            ack.failures.append(self._failure(plan, row, error, payload))
            ack.failed += 1
            ack.pause = PausedRecord(plan.record_key(row), self.now(), error.code, error.message)
            if move_position and outcome.exported:
                ack.position = outcome.exported[-1].position
            # Rows after the halt were read but not consumed: count only what was decided.
            ack.read = len(outcome.exported) + len(outcome.failures) + 1
            ack.skipped = len(outcome.failures)
        elif move_position:
            ack.position = rows[-1].position
        self._ack(result, ack)
        if outcome.halt is not None:
            result.outcome = RunOutcome.PAUSED
            result.paused = ack.pause if isinstance(ack.pause, PausedRecord) else None
            return True
        return False

    def _ack(self, result: StreamResult, ack: BatchAck) -> None:
        calls = self.sink.api_calls
        ack.api_calls = calls - self._calls_acked
        self._calls_acked = calls
        self.store.acknowledge(ack)
        result.read += ack.read
        result.exported += ack.exported
        result.failed += ack.failed
        result.skipped += ack.skipped
        result.api_calls += ack.api_calls

    def _check_flood(self, plan: StreamPlan, streak: _Streak, outcome: _BatchOutcome) -> None:
        if not outcome.failures:
            if outcome.exported:
                streak.reset()
            return
        for _, error, _ in outcome.failures:
            if streak.add(error) >= self.policy.max_identical_errors:
                fields = ", ".join(error.fields) or "no field"
                raise SalesforceConfigurationError(
                    f"{streak.count} records in a row failed with {error.code} on {fields}; "
                    "this looks like a configuration problem (a mapping, a permission or a "
                    f"rule that rejects every record), so the run stops. Last error: "
                    f"{error.message}"
                )

    def _failure(
        self,
        plan: StreamPlan,
        row: SourceRow,
        error: RecordError,
        payload: dict[str, Any] | None,
    ) -> RecordFailure:
        return RecordFailure(
            record_key=plan.record_key(row),
            sobject=plan.fmap.sobject,
            # A row without a key has no external ID: nothing in Salesforce to match.
            external_id="" if row.key is None else row.record_key,
            error=error,
            payload=payload,
        )

    def _record_failure(self, plan: StreamPlan, row: SourceRow, error: RecordError) -> None:
        log.warning(
            "record_failed",
            stream=plan.name,
            key=plan.record_key(row),
            code=error.code,
            message=error.message,
            fields=list(error.fields),
        )

    # ---- the run around it ---------------------------------------------------------------

    def _run(
        self,
        job_id: str,
        plan: StreamPlan,
        body: Callable[[StreamPlan, StreamResult], None],
    ) -> StreamResult:
        run_id = self.store.begin_run(job_id, plan.name)
        result = StreamResult(job_id, plan.name, run_id)
        self._calls_acked = self.sink.api_calls
        try:
            self.store.check_source(plan.source)
            body(plan, result)
            if result.outcome is RunOutcome.RUNNING:
                result.outcome = RunOutcome.COMPLETED
        except StopRequested:
            result.outcome = RunOutcome.INTERRUPTED
            result.error = "stopped on request before the stream was finished"
        except CrmExportError as exc:
            result.outcome = RunOutcome.FAILED
            result.error = str(exc)
            kind = "terminal" if isinstance(exc, TerminalError) else "transient"
            log.error("run_failed", job=job_id, stream=plan.name, kind=kind, error=str(exc))
        except Exception as exc:
            # A bug or a broken database must not take the other streams down with it.
            result.outcome = RunOutcome.FAILED
            result.error = f"unexpected {type(exc).__name__}: {exc}"
            log.exception("run_crashed", job=job_id, stream=plan.name)
        result.api_calls += self.sink.api_calls - self._calls_acked
        self.store.finish_run(run_id, result.outcome, result.error)
        log.info(
            "run_finished",
            job=job_id,
            stream=plan.name,
            run_id=run_id,
            outcome=str(result.outcome),
            read=result.read,
            exported=result.exported,
            failed=result.failed,
            skipped=result.skipped,
            api_calls=result.api_calls,
            error=result.error,
        )
        return result


# Equal to no source row's order value: a deleted paused row is never stepped over.
_GONE = object()


def _null_order_error(plan: StreamPlan) -> RecordError:
    order_by = plan.source.order_by
    return RecordError(
        NULL_ORDER_BY,
        f"order_by column {order_by!r} is NULL. crm-export reads rows in {order_by} order and "
        f"finds changed rows by it, so this row has no place in the order and is not sent. "
        f"Give it a value (the time of its last change) and the next run exports it.",
        (order_by,),
    )


def _first_culprit(results: Sequence[UpsertResult]) -> tuple[int, RecordError] | None:
    for index, res in enumerate(results):
        if res.success:
            continue
        for error in res.errors:
            if error.code != "ALL_OR_NONE_OPERATION_ROLLED_BACK":
                return index, error
    return None


def _configuration(plan: StreamPlan, error: RecordError) -> SalesforceConfigurationError:
    fields = f" (fields: {', '.join(error.fields)})" if error.fields else ""
    return SalesforceConfigurationError(
        f"stream {plan.name!r}: Salesforce rejected the {plan.fmap.sobject} upsert with "
        f"{error.code}: {error.message}{fields}. This affects every record; fix the mapping "
        "or the integration user's access, then run again."
    )
