"""A batch's outcome, decided in full before anything is committed, and what it commits.

``BatchOutcome.to_ack`` is the one place that turns the records' fates into the state
database's changes (position, pause, ExportErrors, counters), for both jobs. ``FloodGuard``
is the rule that tells a record problem from a configuration problem: the same error on many
records in a row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crm_export.classify import missing_parent
from crm_export.errors import SalesforceConfigurationError
from crm_export.mapping import NULL_ORDER_BY
from crm_export.ports import (
    BatchAck,
    PausedRecord,
    RecordError,
    RunCounts,
    SourceRow,
)

from .plan import StreamPlan


@dataclass(frozen=True)
class Rejected:
    """A record Salesforce (or our own mapping) refused, and what was sent for it."""

    row: SourceRow
    error: RecordError
    # None when nothing could be built to send (the mapping refused the row).
    payload: Mapping[str, Any] | None = None


@dataclass
class BatchOutcome:
    """What happened to each record of one batch."""

    exported: list[SourceRow] = field(default_factory=list)
    # Failed records the stream moves past (skip mode, or failures that never pause).
    failures: list[Rejected] = field(default_factory=list)
    # Pause mode: the record the stream halts at; nothing after it was sent.
    halt: Rejected | None = None
    # Rows not sent because a later row of the same batch has the same key.
    superseded: list[SourceRow] = field(default_factory=list)
    # Rows not sent because Salesforce already holds their payload (same fingerprint).
    unchanged: list[SourceRow] = field(default_factory=list)
    # id(row) -> the fingerprint of the payload built for it (kept for exported rows).
    fingerprints: dict[int, bytes] = field(default_factory=dict)

    def errors_in_order(self, rows: Sequence[SourceRow]) -> Iterator[RecordError | None]:
        """Each decided record's error (None: exported), in the order of ``rows``."""
        errors = {id(f.row): f.error for f in self.failures}
        if self.halt is not None:
            errors[id(self.halt.row)] = self.halt.error
        exported = {id(r) for r in self.exported}
        for row in rows:
            if id(row) in errors:
                yield errors[id(row)]
            elif id(row) in exported:
                yield None

    def to_ack(
        self,
        plan: StreamPlan,
        run_id: int,
        rows: Sequence[SourceRow],
        now: datetime,
        *,
        move_position: bool = True,
        paused_since: datetime | None = None,
    ) -> BatchAck:
        """The acknowledgement of this outcome for ``rows`` (the batch as read).

        ``move_position`` is off for rows that sort behind the position (late commits, the
        re-export); ``paused_since`` keeps the date of a pause that continues.

        Every row decided is counted once. After a halt only the rows before it (in batch
        order) and the halting record are decided: rows after it were not sent, whatever
        their fingerprint, and the position moves at most to the last row before it.
        """
        place = {id(r): i for i, r in enumerate(rows)}
        halt_at = len(rows)
        if self.halt is not None:
            halt_at = place.get(id(self.halt.row), len(rows))
        unchanged = [r for r in self.unchanged if place.get(id(r), -1) < halt_at]
        superseded = [r for r in self.superseded if place.get(id(r), -1) < halt_at]
        paused = 0 if self.halt is None else 1
        counts = RunCounts(
            read=len(self.exported)
            + len(unchanged)
            + len(self.failures)
            + paused
            + len(superseded),
            exported=len(self.exported),
            unchanged=len(unchanged),
            failed=len(self.failures),
            paused=paused,
            superseded=len(superseded),
        )
        ack = BatchAck(
            plan.name,
            run_id,
            resolved_keys=[r.record_key for r in self.exported],
            failures=[plan.failure(f.row, f.error, f.payload) for f in self.failures],
            fingerprints={
                r.record_key: self.fingerprints[id(r)]
                for r in self.exported
                if id(r) in self.fingerprints
            },
            counts=counts,
        )
        if self.halt is not None:
            halt = self.halt
            ack.failures.append(plan.failure(halt.row, halt.error, halt.payload))
            ack.pause = PausedRecord(
                plan.record_key(halt.row),
                paused_since or now,
                halt.error.code,
                halt.error.message,
            )
            done = [r for r in [*self.exported, *unchanged] if id(r) in place]
            if move_position and done:
                ack.position = max(done, key=lambda r: place[id(r)]).position
        elif move_position and rows:
            ack.position = rows[-1].position
        return ack


@dataclass
class FloodGuard:
    """Stops a run when ``limit`` records in a row fail with the same code and fields.

    Such a flood means configuration (a mapping, a permission, a rule that rejects every
    record), and ExportErrors must not fill with thousands of identical rows. "In a row"
    means consecutive records in source order: any record that goes through between two
    failures ends the streak, however the batches fall.
    """

    limit: int
    signature: tuple[str, tuple[str, ...]] | None = None
    count: int = 0

    def observe(self, outcome: BatchOutcome, rows: Sequence[SourceRow]) -> None:
        for error in outcome.errors_in_order(rows):
            self.note(error)

    def note(self, error: RecordError | None) -> None:
        """The next record in source order: its error, or None when it went through."""
        if error is None or missing_parent(error) is not None:
            # A child whose parent is not in Salesforce yet (its stream may be paused) is a
            # record problem, however many share it: it ends a streak and never starts one.
            self.signature, self.count = None, 0
            return
        signature = (error.code, error.fields)
        self.count = self.count + 1 if signature == self.signature else 1
        self.signature = signature
        if self.count >= self.limit:
            fields = ", ".join(error.fields) or "no field"
            raise SalesforceConfigurationError(
                f"{self.count} records in a row failed with {error.code} on {fields}; "
                "this looks like a configuration problem (a mapping, a permission or a "
                "rule that rejects every record), so the run stops. Last error: "
                f"{error.message}"
            )


def null_order_error(plan: StreamPlan) -> RecordError:
    order_by = plan.source.order_by
    return RecordError(
        NULL_ORDER_BY,
        f"order_by column {order_by!r} is NULL. crm-export reads rows in {order_by} order and "
        f"finds changed rows by it, so this row has no place in the order and is not sent. "
        f"Give it a value (the time of its last change) and the next run exports it.",
        (order_by,),
    )


def configuration_error(plan: StreamPlan, error: RecordError) -> SalesforceConfigurationError:
    fields = f" (fields: {', '.join(error.fields)})" if error.fields else ""
    return SalesforceConfigurationError(
        f"stream {plan.name!r}: Salesforce rejected the {plan.fmap.sobject} upsert with "
        f"{error.code}: {error.message}{fields}. This affects every record; fix the mapping "
        "or the integration user's access, then run again."
    )
