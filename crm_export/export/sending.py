"""Sending one batch: building the payloads, and the two ways a batch goes to Salesforce.

Pause mode sends with allOrNone and cuts the batch before the first record at fault, so that
nothing ordered after it is written; skip mode sends each record on its own. Record-level
transient errors (a row lock) are retried here, bounded in attempts and in elapsed time.
Nothing is acknowledged here: the caller commits the ``BatchOutcome``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from crm_export.classify import ErrorClass, classify_record_error
from crm_export.errors import SalesforceConfigurationError
from crm_export.mapping import MappingError, build_payload
from crm_export.ports import RecordError, Sink, SourceRow, UpsertResult, record_key_text
from crm_export.retry import Backoff, Clock

from .outcome import BatchOutcome, Rejected, configuration_error, null_order_error
from .plan import ExportPolicy, StreamPlan

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


class BatchSender:
    def __init__(self, sink: Sink, policy: ExportPolicy, clock: Clock, rng: random.Random) -> None:
        self.sink = sink
        self.policy = policy
        self.clock = clock
        self.rng = rng

    def send(
        self, plan: StreamPlan, rows: Sequence[SourceRow], *, all_or_none: bool | None = None
    ) -> BatchOutcome:
        """Send ``rows`` and decide every record's outcome."""
        pause = plan.pause_on_error if all_or_none is None else all_or_none
        outcome = BatchOutcome()
        prepared: list[_Prepared] = []
        keys: set[str] = set()
        for row in rows:
            if row.key is not None and row.order_value is None:
                # No place in the order, so nothing waits behind it: it never pauses.
                outcome.failures.append(Rejected(row, null_order_error(plan)))
                continue
            try:
                item = _Prepared(row, build_payload(plan.fmap, row))
            except MappingError as exc:
                if pause:
                    # Nothing ordered after an unsendable record may go out.
                    outcome.halt = Rejected(row, exc.error)
                    break
                outcome.failures.append(Rejected(row, exc.error))
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
        self, plan: StreamPlan, prepared: list[_Prepared], item: _Prepared, outcome: BatchOutcome
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
        self, plan: StreamPlan, prepared: list[_Prepared], outcome: BatchOutcome
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
        retries = _RecordRetries(self.policy.record_retry, self.clock, self.rng)
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
                culprit_error = RecordError(ROLLED_BACK, "rolled back")
                index = 0
            else:
                index, culprit_error = culprit
            cls = classify_record_error(culprit_error)
            if cls is ErrorClass.CONFIGURATION:
                raise configuration_error(plan, culprit_error)
            if cls is ErrorClass.TRANSIENT:
                item = pending[index]
                retry = retries.next_wait(id(item))
                if retry is not None:
                    if index == 0:
                        self._wait(plan, *retry, item.row, culprit_error)
                    # Otherwise the call for the records before it stands in for the wait.
                    send = index or send
                    continue
            halted = pending[index]
            outcome.halt = Rejected(halted.row, culprit_error, halted.payload)
            remaining = remaining[:index]
            send = index

    def _send_independently(
        self, plan: StreamPlan, prepared: list[_Prepared], outcome: BatchOutcome
    ) -> None:
        """allOrNone=false: each record succeeds or fails alone; transient ones are resent."""
        pending = prepared
        retries = _RecordRetries(self.policy.record_retry, self.clock, self.rng)
        # One budget for the batch's round of retries: they wait and go together.
        round_key = 0
        while pending:
            results = self._upsert(plan, pending, all_or_none=False)
            transient: list[tuple[_Prepared, RecordError]] = []
            for item, res in zip(pending, results, strict=True):
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
            self._wait(plan, *retry, transient[0][0].row, transient[0][1])
            pending = [item for item, _ in transient]

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


def _first_culprit(results: Sequence[UpsertResult]) -> tuple[int, RecordError] | None:
    for index, res in enumerate(results):
        if res.success:
            continue
        for error in res.errors:
            if error.code != ROLLED_BACK:
                return index, error
    return None
