"""Change detection in the export core, on the in-memory twins: rows whose payload Salesforce
already holds are not sent, each row is counted once, and the records that must always go
(an open error, the paused record, the re-export, --resend-all, a resync) always go."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_export.export import Exporter, ExportPolicy, StreamPlan
from crm_export.export.fingerprints import fingerprint
from crm_export.mapping import FieldMap
from crm_export.ports import RecordError, RunCounts, RunOutcome, SourceRow, StreamSource
from crm_export.testing import FakeClock, InMemorySink, InMemoryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FIELDS = (("LastName", "last_name"),)


def row(key: int, last_name: str = "Smith", minutes: int | None = None) -> SourceRow:
    at = T0 + timedelta(minutes=key if minutes is None else minutes)
    return SourceRow(key, at, {"last_name": last_name, "title": "x", "updated_at": at})


def plan(pause: bool = True, fields: tuple[tuple[str, str], ...] = FIELDS) -> StreamPlan:
    return StreamPlan(
        name="contacts",
        fmap=FieldMap("Contact", "External_Id__c", "id", fields),
        source=StreamSource("contacts", "id", "updated_at", ("last_name", "title"), "x", "c"),
        pause_on_error=pause,
    )


def reject_bad(record: Any) -> RecordError | None:
    if record.get("LastName") == "BAD":
        return RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION", "no BADs", ("LastName",))
    return None


def make(
    rows: list[SourceRow], batch_size: int = 200
) -> tuple[InMemoryStore, InMemorySink, Exporter]:
    store = InMemoryStore({"contacts": rows})
    sink = InMemorySink([reject_bad])
    policy = ExportPolicy(batch_size=batch_size)
    return store, sink, Exporter(store, sink, policy, FakeClock(), rng=random.Random(1))


def touch(store: InMemoryStore, keys: range, later: int = 1000, **values: str) -> None:
    """Bump the order value of these rows (an app re-saving them), changing ``values``."""
    for key in keys:
        old = next(r for r in store.rows["contacts"] if r.key == key)
        at = T0 + timedelta(minutes=later + key)
        store.put_row("contacts", SourceRow(key, at, {**old.values, **values, "updated_at": at}))


def counted_once(counts: RunCounts) -> bool:
    c = counts
    return c.read == c.exported + c.unchanged + c.failed + c.paused + c.superseded


def test_re_touched_rows_cost_no_call_and_count_as_unchanged() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 501)])
    first = exporter.export_stream(plan())
    # Three upserts, and the describe of Contact before the first.
    assert (first.counts.exported, first.counts.api_calls) == (500, 4)
    touch(store, range(1, 501))
    again = exporter.export_stream(plan())
    assert again.outcome is RunOutcome.COMPLETED
    assert (again.counts.read, again.counts.unchanged, again.counts.api_calls) == (500, 500, 0)
    assert len(sink.requests) == 3
    # The position moved over them all: the next run reads nothing.
    assert store.load_state("contacts").position == store.rows["contacts"][-1].position
    assert store.runs[-1].counts == again.counts
    assert counted_once(again.counts)


def test_fingerprints_are_looked_up_once_per_batch() -> None:
    store, _, exporter = make([row(i) for i in range(1, 451)])
    exporter.export_stream(plan())
    touch(store, range(1, 451))
    store.fingerprint_queries = 0
    exporter.export_stream(plan())
    assert store.fingerprint_queries == 3  # 200 + 200 + 50 rows


def test_only_changed_rows_are_sent_in_order_and_unchanged_ones_move_the_position() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 11)])
    exporter.export_stream(plan())
    touch(store, range(1, 11))
    touch(store, range(4, 5), last_name="Jones")
    touch(store, range(9, 10), last_name="Brown")
    result = exporter.export_stream(plan())
    assert sink.requests[-1] == (True, ["4", "9"])
    assert (result.counts.exported, result.counts.unchanged) == (2, 8)
    assert sink.records["4"]["LastName"] == "Jones"


def test_a_changed_mapping_resends() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 4)])
    exporter.export_stream(plan())
    touch(store, range(1, 4))
    wider = plan(fields=(*FIELDS, ("Title", "title")))
    result = exporter.export_stream(wider)
    assert result.counts.exported == 3
    assert sink.records["1"]["Title"] == "x"


def test_the_fingerprint_covers_the_object_and_the_external_id_field() -> None:
    payload = {"External_Id__c": "1", "LastName": "Smith"}
    base = FieldMap("Contact", "External_Id__c", "id", FIELDS)
    assert fingerprint(base, payload) == fingerprint(base, dict(reversed(payload.items())))
    assert fingerprint(base, payload) != fingerprint(replace(base, sobject="Lead"), payload)
    other_id = replace(base, external_id_field="Legacy_Id__c")
    assert fingerprint(base, payload) != fingerprint(other_id, payload)
    assert len(fingerprint(base, payload)) == 16


def test_pause_mode_halts_at_the_failure_and_counts_only_what_was_decided() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 7)])
    exporter.export_stream(plan())
    # 1-6 re-touched; 3 now fails; 2 and 5 unchanged around it.
    touch(store, range(1, 7))
    touch(store, range(3, 4), last_name="BAD")
    touch(store, range(4, 5), last_name="Four")
    result = exporter.export_stream(plan())
    assert result.outcome is RunOutcome.PAUSED and result.paused is not None
    assert result.paused.record_key == "3"
    # Rows 1-2 are unchanged (decided), 3 halts, 4-6 are not decided: not sent, not counted.
    c = result.counts
    assert (c.read, c.unchanged, c.paused, c.exported) == (3, 2, 1, 0)
    assert counted_once(c)
    assert store.load_state("contacts").position == store.rows["contacts"][1].position
    assert sink.records["4"]["LastName"] == "Smith"  # nothing after the paused record


def test_an_open_error_always_sends_even_when_the_payload_is_unchanged() -> None:
    # Salesforce accepted "Smith" for record 2, then refused "BAD"; the source goes back to
    # "Smith": an unchanged fingerprint, but the open ExportErrors row says Salesforce's last
    # word on this record was a refusal, so only Salesforce may close it.
    store, _sink, exporter = make([row(i) for i in range(1, 4)])
    exporter.export_stream(plan(pause=False))
    touch(store, range(2, 3), last_name="BAD")
    exporter.export_stream(plan(pause=False))
    assert [e.record_key for e in store.open_error_rows()] == ["2"]
    touch(store, range(2, 3), later=2000, last_name="Smith")
    result = exporter.export_stream(plan(pause=False))
    assert (result.counts.exported, result.counts.unchanged) == (1, 0)
    assert store.open_error_rows() == []


def test_the_paused_record_is_always_sent() -> None:
    store, sink, exporter = make([row(1), row(2), row(3)])
    exporter.export_stream(plan())
    touch(store, range(2, 3), last_name="BAD")
    exporter.export_stream(plan())
    # Someone closes the error in SQL and puts the old value back: the pause stays until
    # Salesforce itself accepts the record, so it is sent, not skipped as unchanged.
    store.errors[0].status = type(store.errors[0].status)("resolved")
    touch(store, range(2, 3), later=2000, last_name="Smith")
    calls = len(sink.requests)
    result = exporter.export_stream(plan())
    assert sink.requests[calls] == (True, ["2"])
    assert result.outcome is RunOutcome.COMPLETED and store.load_state("contacts").paused is None


def test_the_reexport_always_sends() -> None:
    store, sink, exporter = make([row(1), row(2, "BAD"), row(3)])
    exporter.export_stream(plan(pause=False))
    sink.rules.clear()  # the org's rule is relaxed; the row itself never changed
    result = exporter.reexport_stream(plan(pause=False))
    assert (result.counts.exported, result.counts.unchanged) == (1, 0)
    assert store.open_error_rows() == []
    assert store.fingerprints[("contacts", "2")] == fingerprint(
        plan().fmap, {"External_Id__c": "2", "LastName": "BAD"}
    )


def test_resend_all_ignores_the_fingerprints_and_replaces_them() -> None:
    store, _sink, exporter = make([row(i) for i in range(1, 4)])
    exporter.export_stream(plan())
    touch(store, range(1, 4))
    result = exporter.export_stream(plan(), resend_all=True)
    assert (result.counts.exported, result.counts.unchanged) == (3, 0)
    touch(store, range(1, 4), later=2000)
    assert exporter.export_stream(plan()).counts.unchanged == 3


def test_a_resync_starts_over_and_sends_every_row_once() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 6)])
    exporter.export_stream(plan())
    store.request_resync("contacts")
    result = exporter.export_stream(plan())
    assert (result.counts.read, result.counts.exported) == (5, 5)
    assert sink.writes == [str(i) for i in (1, 2, 3, 4, 5, 1, 2, 3, 4, 5)]
    assert store.load_state("contacts").resync_requested is False
    assert exporter.export_stream(plan()).counts.read == 0


def test_no_fingerprint_for_a_batch_that_was_never_acknowledged() -> None:
    store, _sink, exporter = make([row(i) for i in range(1, 5)], batch_size=2)
    store.fail_next_ack = RuntimeError("power cut")
    exporter.export_stream(plan())
    assert store.fingerprints == {}
    # Salesforce has 1 and 2, but crm-export never confirmed it: they are sent again.
    result = exporter.export_stream(plan())
    assert result.counts.exported == 4 and result.counts.unchanged == 0


def test_duplicate_keys_in_a_batch_count_the_earlier_row_as_superseded() -> None:
    store, _sink, exporter = make([])
    store.rows["contacts"] = [row(1, "Old", minutes=1), row(2), row(1, "New", minutes=3)]
    result = exporter.export_stream(plan())
    c = result.counts
    assert (c.read, c.exported, c.superseded) == (3, 2, 1)
    # Again, with the later row unchanged: the earlier one is still superseded, not unchanged.
    store.rows["contacts"] = [
        row(1, "Old", minutes=11),
        row(2, minutes=12),
        row(1, "New", minutes=13),
    ]
    again = exporter.export_stream(plan())
    c = again.counts
    assert (c.read, c.unchanged, c.superseded, c.exported) == (3, 2, 1, 0)
    assert counted_once(c)


def test_the_calls_of_a_failed_batch_reach_the_run_row() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 5)], batch_size=2)
    real = sink.upsert

    def fail_second(*args: Any, **kwargs: Any) -> Any:
        if sink.api_calls == 1:
            sink._charge()  # the call went out, and failed
            raise RuntimeError("the answer was garbage")
        return real(*args, **kwargs)

    sink.upsert = fail_second  # type: ignore[method-assign]
    result = exporter.export_stream(plan())
    assert result.outcome is RunOutcome.FAILED
    assert result.counts.api_calls == 2 == store.runs[0].counts.api_calls
