"""The export core reports each stream run's progress to an observer (issue 12 §1): once at
the start with the rows pending, after every acknowledged batch, and once at the end."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from crm_export.export import Exporter, ExportPolicy, StreamPlan, StreamProgress
from crm_export.mapping import FieldMap
from crm_export.ports import RecordError, RunOutcome, SourceRow, StreamSource
from crm_export.testing import FakeClock, InMemorySink, InMemoryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(key: int, last_name: str = "Smith") -> SourceRow:
    at = T0 + timedelta(minutes=key)
    return SourceRow(key, at, {"last_name": last_name, "updated_at": at})


PLAN = StreamPlan(
    name="contacts",
    fmap=FieldMap("Contact", "External_Id__c", "id", (("LastName", "last_name"),)),
    source=StreamSource("contacts", "id", "updated_at", ("last_name",), "sqlite://", "c"),
    pause_on_error=True,
)


def reject_bad(record: Mapping[str, object]) -> RecordError | None:
    if record["LastName"] == "BAD":
        return RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION", "no BADs", ("LastName",))
    return None


def watched(rows: list[SourceRow]) -> tuple[InMemoryStore, Exporter, list[StreamProgress]]:
    seen: list[StreamProgress] = []
    store = InMemoryStore({"contacts": rows})
    exporter = Exporter(
        store,
        InMemorySink([reject_bad]),
        ExportPolicy(batch_size=3),
        FakeClock(),
        rng=random.Random(1),
        on_progress=seen.append,
    )
    return store, exporter, seen


def test_a_run_reports_its_pending_rows_then_each_batch_then_its_end() -> None:
    store, exporter, seen = watched([row(i) for i in range(1, 8)])
    exporter.export_stream(PLAN)
    assert [p.pending for p in seen] == [7] * len(seen)
    assert [(p.result.counts.read, p.result.counts.exported) for p in seen] == [
        (0, 0),
        (3, 3),
        (6, 6),
        (7, 7),
        (7, 7),
    ]
    assert [p.finished for p in seen] == [False, False, False, False, True]
    assert seen[-1].result.outcome is RunOutcome.COMPLETED
    assert seen[0].result.outcome is RunOutcome.RUNNING
    # Each report is a copy: what the observer kept does not change under it.
    assert seen[1].result.counts.read == 3

    # The next run counts only what is new since the position.
    store.put_row("contacts", row(8))
    seen.clear()
    exporter.export_stream(PLAN)
    assert seen[0].pending == 1 and seen[-1].result.counts.read == 1


def test_a_paused_stream_counts_its_paused_record_among_the_pending() -> None:
    _, exporter, seen = watched([row(1), row(2, "BAD"), row(3)])
    exporter.export_stream(PLAN)
    assert seen[-1].result.outcome is RunOutcome.PAUSED
    seen.clear()
    exporter.export_stream(PLAN)
    # Position after 1; the paused record 2 and record 3 are both still ahead.
    assert seen[0].pending == 2


def test_the_re_export_reports_progress_without_a_count() -> None:
    store, exporter, seen = watched([row(1), row(2, "BAD"), row(3)])
    exporter.export_stream(PLAN)
    seen.clear()
    store.put_row("contacts", row(2, "Fixed"))
    exporter.reexport_stream(PLAN)
    assert {p.pending for p in seen} == {None}
    assert seen[-1].finished and seen[-1].result.counts.exported == 1


def test_an_observer_that_raises_does_not_fail_the_export() -> None:
    store = InMemoryStore({"contacts": [row(1), row(2)]})

    def broken(progress: StreamProgress) -> None:
        raise RuntimeError("display bug")

    exporter = Exporter(
        store, InMemorySink(), ExportPolicy(), FakeClock(), rng=random.Random(1), on_progress=broken
    )
    result = exporter.export_stream(PLAN)
    assert result.outcome is RunOutcome.COMPLETED and result.counts.exported == 2
    assert store.load_state("contacts").position == row(2).position
