"""Sending one batch: building the payloads, and the two ways a batch goes to Salesforce.

Pause mode sends with allOrNone and cuts the batch before the first record at fault, so that
nothing ordered after it is written; skip mode sends the records with allOrNone=false, each
succeeding or failing on its own. Record-level transient errors (a row lock) are retried
here, bounded in attempts and in elapsed time.

A request Salesforce refuses whole for a value in one record (``RequestPayloadError``: a
date that is no date) is split until that record stands alone, and it becomes a record
error like any other (``_Split`` holds the bounds). Nothing is acknowledged here: the caller
commits the ``BatchOutcome``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from crm_export.classify import ErrorClass, classify_record_error
from crm_export.errors import RequestPayloadError, SalesforceConfigurationError
from crm_export.mapping import MappingError, build_payload
from crm_export.ports import RecordError, Sink, SourceRow, UpsertResult, record_key_text
from crm_export.retry import Backoff, Clock

from .fingerprints import fingerprint
from .outcome import BatchOutcome, FloodGuard, Rejected, configuration_error, null_order_error
from .plan import ExportPolicy, StreamPlan
from .presend import BatchCheck, Presend

log = structlog.get_logger("crm_export.export")

ROLLED_BACK = "ALL_OR_NONE_OPERATION_ROLLED_BACK"


@dataclass
class _Prepared:
    row: SourceRow
    payload: dict[str, Any]


class _RecordRetries:
    """Whether a record that failed for a passing reason may go again, and after how long.

    Both bounds of ``[export] record_retry_attempts`` and ``[retry] max_elapsed_seconds``
    hold: a lock that outlasts either is recorded with its code.
    """

    def __init__(self, backoff: Backoff, clock: Clock, rng: random.Random) -> None:
        self.backoff, self.clock, self.rng = backoff, clock, rng
        self._tries: dict[int, int] = {}
        self._since: dict[int, float] = {}

    def next_wait(self, key: int) -> tuple[int, float] | None:
        """(attempt, seconds to wait) for the record ``key``, or None when it is out of time."""
        attempt = self._tries[key] = self._tries.get(key, 0) + 1
        since = self._since.setdefault(key, self.clock.monotonic())
        if attempt >= self.backoff.max_attempts:
            return None
        wait = self.backoff.delay(attempt, self.rng)
        if self.clock.monotonic() - since + wait > self.backoff.max_elapsed:
            return None
        return attempt, wait


class _Split:
    """The bounds on finding the records behind whole-request refusals, in one batch.

    Each refusal costs calls to isolate its record: the calls after a batch's first refusal
    may not outnumber the batch's records (sending each alone would have been cheaper, and
    values that dense are the mapping's fault), and ``limit`` refused records in a row are a
    flood (``FloodGuard``, as for record errors). Either stops the run as configuration.
    """

    def __init__(self, plan: StreamPlan, prepared: Sequence[_Prepared], limit: int) -> None:
        self.plan = plan
        self.size = len(prepared)
        self.calls_left = len(prepared)
        # The batch's latest refusal, once there was one.
        self.refused: RecordError | None = None
        self.flood = FloodGuard(limit)
        self._positions = {id(p): i for i, p in enumerate(prepared)}
        self._last: int | None = None

    def call(self) -> None:
        """Before each call: once the batch was refused, calls are counted against the bound."""
        if self.refused is None:
            return
        if self.calls_left <= 0:
            raise SalesforceConfigurationError(
                f"stream {self.plan.name!r}: Salesforce refused whole {self.plan.fmap.sobject} "
                f"requests for values in so many records of one batch that finding them "
                f"took {self.size} calls, one per record. The mapping sends values a field "
                "cannot hold (text for a date or a number, say); fix the mapping or the "
                f"source, then run again. Last refusal: {self.refused.code}: "
                f"{self.refused.message}"
            )
        self.calls_left -= 1

    def found(self, item: _Prepared, error: RecordError) -> None:
        """``item`` stands alone: it is the record refused with ``error``."""
        position = self._positions[id(item)]
        if self._last is not None and position != self._last + 1:
            self.flood.note(None)  # the records between went through the parser
        self._last = position
        self.flood.note(error)


def _refusal(exc: RequestPayloadError) -> RecordError:
    return RecordError(exc.code, exc.detail)


def _culprit(exc: RequestPayloadError, group: Sequence[_Prepared]) -> int | None:
    return exc.culprit if exc.culprit is not None and 0 <= exc.culprit < len(group) else None


def _unpinned(exc: RequestPayloadError) -> RequestPayloadError:
    """The same refusal, for a part of the request its ``culprit`` index does not apply to."""
    return RequestPayloadError(str(exc), code=exc.code, detail=exc.detail)


RecordRetryObserver = Callable[[str, str], None]


class BatchSender:
    def __init__(
        self,
        sink: Sink,
        policy: ExportPolicy,
        clock: Clock,
        rng: random.Random,
        on_record_retry: RecordRetryObserver | None = None,
    ) -> None:
        self.sink = sink
        # Told (stream, code) of each record about to be sent again: the retries metric.
        self.on_record_retry = on_record_retry
        self.policy = policy
        self.clock = clock
        self.rng = rng
        self.presend = Presend(sink, policy.max_identical_errors)

    def send(
        self,
        plan: StreamPlan,
        rows: Sequence[SourceRow],
        *,
        all_or_none: bool | None = None,
        known: Mapping[str, bytes] | None = None,
    ) -> BatchOutcome:
        """Send ``rows`` and decide every record's outcome.

        ``known`` holds the fingerprints of what Salesforce last accepted, by record key: a
        row whose payload has the same fingerprint is not sent (``unchanged``). In pause mode
        it is decided in its place, like a record sent and accepted.
        """
        known = known or {}
        pause = plan.pause_on_error if all_or_none is None else all_or_none
        outcome = BatchOutcome()
        prepared: list[_Prepared] = []
        keys: set[str] = set()
        # The describe behind the pre-send checks is asked (once per run) only when a row is
        # to be sent: a batch Salesforce already holds costs no call at all.
        check: BatchCheck | None = None
        for row in rows:
            if row.key is not None and row.order_value is None:
                # No place in the order, so nothing waits behind it: it never pauses.
                outcome.failures.append(Rejected(row, null_order_error(plan)))
                continue
            try:
                payload = build_payload(plan.fmap, row)
                digest = fingerprint(plan.fmap, payload)
                unchanged = known.get(row.record_key) == digest
                if not unchanged:
                    check = check or self.presend.batch_check(plan)  # may stop the stream
                    payload = check(payload)
                elif check is not None:
                    check.flood.note(None)  # Salesforce accepted this payload: no streak
                item = _Prepared(row, payload)
            except MappingError as exc:
                if pause:
                    # Nothing ordered after an unsendable record may go out.
                    outcome.halt = Rejected(row, exc.error)
                    break
                outcome.failures.append(Rejected(row, exc.error))
                continue
            outcome.fingerprints[id(row)] = digest
            if row.record_key in keys:
                self._supersede(plan, prepared, item, outcome)
            keys.add(row.record_key)
            if unchanged:
                outcome.unchanged.append(row)
                continue
            prepared.append(item)
        if pause:
            self._send_in_order(plan, prepared, outcome)
        else:
            self._send_independently(plan, prepared, outcome)
        return outcome

    def _supersede(
        self, plan: StreamPlan, prepared: list[_Prepared], item: _Prepared, outcome: BatchOutcome
    ) -> None:
        """Drop an earlier row of the batch with ``item``'s key: the later row wins.

        Two source rows with one key are one Salesforce record, and a request holding the
        key twice is refused for both. Sent in order, the later row would overwrite the
        earlier anyway (as it does when they fall in different batches), so only it goes.
        """
        key = item.row.record_key
        for index, earlier_row in enumerate(outcome.unchanged):
            if earlier_row.record_key == key:
                del outcome.unchanged[index]
                self._superseded(plan, earlier_row, item, outcome)
                return
        for index, earlier in enumerate(prepared):
            if earlier.row.record_key == key:
                del prepared[index]
                self._superseded(plan, earlier.row, item, outcome)
                return

    def _superseded(
        self, plan: StreamPlan, earlier: SourceRow, item: _Prepared, outcome: BatchOutcome
    ) -> None:
        key = item.row.record_key
        outcome.superseded.append(earlier)
        log.warning(
            "duplicate_key",
            stream=plan.name,
            key=key,
            detail=(
                f"more than one source row has {plan.source.key} = {key}; the one "
                f"with {plan.source.order_by} = {record_key_text(item.row.order_value)}"
                f" is sent, the one with {plan.source.order_by} = "
                f"{record_key_text(earlier.order_value)} is not. Make "
                f"{plan.source.key} unique."
            ),
        )

    def _send_in_order(
        self, plan: StreamPlan, prepared: list[_Prepared], outcome: BatchOutcome
    ) -> None:
        """allOrNone=true, cutting the batch before the first record at fault.

        With allOrNone nothing commits when any record fails, so resending only the prefix
        before the culprit is how a batch is written up to, and never past, that record.
        A record that is only locked (a transient fault) goes the same way: the records
        before it are sent first, then it and the rest. Resending the whole batch instead
        would meet a new lock somewhere in most calls once locks are frequent.

        A request refused whole for one record's value writes nothing and gives no result.
        When the refusal names the record, the records before it are sent and the stream
        halts at it (2 calls); otherwise the first half is sent, and the search goes on in
        whichever half holds it, in order (about log2(n) calls). Either way nothing after it
        is written.
        """
        remaining = list(prepared)  # not yet written, in order
        send = len(remaining)  # how many of them the next call carries
        retries = _RecordRetries(self.policy.record_retry, self.clock, self.rng)
        split = _Split(plan, prepared, self.policy.max_identical_errors)
        # After a whole-request refusal: the record it names (``culprit``), or else the last
        # record of the group refused (``refused_to``), which then holds the culprit.
        culprit: _Prepared | None = None
        refused_to: _Prepared | None = None
        refusal = RecordError("", "")
        while send:
            pending = remaining[:send]
            split.call()
            try:
                results = self._upsert(plan, pending, all_or_none=True)
            except RequestPayloadError as exc:
                # Nothing was written. The records before the culprit go first, so that it is
                # the first record of the request when it stands alone.
                split.refused = refusal = _refusal(exc)
                index = _culprit(exc, pending)
                if index == 0 or send == 1:
                    self._halt(outcome, pending[0], refusal)
                    return
                if index is not None:
                    culprit, refused_to, send = pending[index], None, index
                else:
                    culprit, refused_to, send = None, pending[-1], send // 2
                continue
            if all(r.success for r in results):
                outcome.exported.extend(p.row for p in pending)
                remaining = remaining[send:]
                if culprit is not None:
                    send = remaining.index(culprit)
                    if send == 0:
                        self._halt(outcome, culprit, refusal)
                        return
                elif refused_to is not None:
                    left = remaining.index(refused_to) + 1
                    if left == 1:
                        # The others of the group refused all went through: it was this one.
                        self._halt(outcome, refused_to, refusal)
                        return
                    send = left // 2
                else:
                    send = len(remaining)
                continue
            culprit_at = _first_culprit(results)
            if culprit_at is None:
                # Everything was rolled back but nobody is to blame: retry the same request.
                culprit_error = RecordError(ROLLED_BACK, "rolled back")
                index = 0
            else:
                index, culprit_error = culprit_at
            cls = classify_record_error(culprit_error)
            if cls is ErrorClass.CONFIGURATION:
                raise configuration_error(plan, culprit_error)
            if cls is ErrorClass.TRANSIENT:
                item = pending[index]
                retry = retries.next_wait(id(item))
                if retry is not None:
                    self._retrying(plan, [culprit_error])
                    if index == 0:
                        self._wait(plan, *retry, item.row, culprit_error)
                    # Otherwise the call for the records before it stands in for the wait.
                    send = index or send
                    continue
            # A record error before any refused record: the stream halts here instead.
            self._halt(outcome, pending[index], culprit_error)
            remaining = remaining[:index]
            send = index
            culprit = refused_to = None

    def _send_independently(
        self, plan: StreamPlan, prepared: list[_Prepared], outcome: BatchOutcome
    ) -> None:
        """allOrNone=false: each record succeeds or fails alone; transient ones are resent,
        and records a request is refused for are split out of it (``_upsert_apart``)."""
        pending = prepared
        retries = _RecordRetries(self.policy.record_retry, self.clock, self.rng)
        split = _Split(plan, prepared, self.policy.max_identical_errors)
        # One budget for the batch's round of retries: they wait and go together.
        round_key = 0
        while pending:
            answered = self._upsert_apart(plan, pending, split, outcome)
            transient: list[tuple[_Prepared, RecordError]] = []
            for item, res in answered:
                if res.success:
                    outcome.exported.append(item.row)
                    continue
                error = res.errors[0] if res.errors else RecordError("UNKNOWN", "no error given")
                cls = classify_record_error(error)
                if cls is ErrorClass.CONFIGURATION:
                    raise configuration_error(plan, error)
                if cls is ErrorClass.TRANSIENT:
                    transient.append((item, error))
                    continue
                outcome.failures.append(Rejected(item.row, error, item.payload))
            retry = retries.next_wait(round_key) if transient else None
            if retry is None:
                outcome.failures += [Rejected(i.row, e, i.payload) for i, e in transient]
                return
            self._retrying(plan, [e for _, e in transient])
            self._wait(plan, *retry, transient[0][0].row, transient[0][1])
            pending = [item for item, _ in transient]

    def _upsert_apart(
        self, plan: StreamPlan, items: list[_Prepared], split: _Split, outcome: BatchOutcome
    ) -> list[tuple[_Prepared, UpsertResult]]:
        """allOrNone=false, splitting every request Salesforce refuses whole until each
        record it refused stands alone; those become failures, the rest get their results.

        The record a refusal names is taken out and the rest sent again; a refusal that
        names none is halved, the left half first (so records are found in source order),
        and when that half goes through, the right half is known to hold the record.
        """
        answered: list[tuple[_Prepared, UpsertResult]] = []
        # Groups to send (no refusal yet), or known to be refused (with Salesforce's answer).
        todo: list[tuple[list[_Prepared], RequestPayloadError | None]] = [(items, None)]
        while todo:
            group, refused = todo.pop()
            if refused is None:
                split.call()
                try:
                    answered += zip(
                        group, self._upsert(plan, group, all_or_none=False), strict=True
                    )
                    continue
                except RequestPayloadError as exc:
                    split.refused, refused = _refusal(exc), exc
            index = _culprit(refused, group)
            if index is not None or len(group) == 1:
                item = group[index or 0]
                split.found(item, _refusal(refused))
                outcome.failures.append(Rejected(item.row, _refusal(refused), item.payload))
                rest = [i for i in group if i is not item]
                if rest:
                    todo.append((rest, None))
                continue
            left, right = group[: len(group) // 2], group[len(group) // 2 :]
            split.call()
            try:
                answered += zip(left, self._upsert(plan, left, all_or_none=False), strict=True)
            except RequestPayloadError as exc:
                split.refused = _refusal(exc)
                todo += [(right, None), (left, exc)]
            else:
                # The left half went through, so the record refused is in the right one.
                todo.append((right, _unpinned(refused)))
        return answered

    def _halt(self, outcome: BatchOutcome, item: _Prepared, error: RecordError) -> None:
        outcome.halt = Rejected(item.row, error, item.payload)

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

    def _wait(
        self, plan: StreamPlan, attempt: int, wait: float, row: SourceRow, error: RecordError
    ) -> None:
        log.info(
            "record_retry",
            stream=plan.name,
            key=plan.record_key(row),
            code=error.code,
            attempt=attempt,
            wait_seconds=round(wait, 3),
        )
        self.clock.sleep(wait)

    def _retrying(self, plan: StreamPlan, errors: Sequence[RecordError]) -> None:
        """Tell the observer of each record about to go again (``errors``: one per record)."""
        if self.on_record_retry is None:
            return
        try:
            for error in errors:
                self.on_record_retry(plan.name, error.code)
        except Exception:
            # A metric must never fail an export.
            log.exception("record_retry_observer_failed", stream=plan.name)


def _first_culprit(results: Sequence[UpsertResult]) -> tuple[int, RecordError] | None:
    for index, res in enumerate(results):
        if res.success:
            continue
        for error in res.errors:
            if error.code != ROLLED_BACK:
                return index, error
    return None
