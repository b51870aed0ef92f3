"""The export core's policy, on the in-memory twins of the store and the sink."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_export.errors import OrgMismatchError, RequestLimitError, SalesforceConfigurationError
from crm_export.export import Exporter, ExportPolicy, StreamPlan
from crm_export.mapping import FieldMap
from crm_export.ports import RecordError, RunOutcome, SourceRow, StreamSource
from crm_export.retry import Backoff
from crm_export.testing import FakeClock, InMemorySink, InMemoryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(key: int, last_name: str = "Smith", minutes: int | None = None) -> SourceRow:
    at = T0 + timedelta(minutes=key if minutes is None else minutes)
    return SourceRow(key, at, {"last_name": last_name, "updated_at": at})


def plan(pause: bool) -> StreamPlan:
    return StreamPlan(
        name="contacts",
        fmap=FieldMap("Contact", "External_Id__c", "id", (("LastName", "last_name"),)),
        source=StreamSource("contacts", "id", "updated_at", ("last_name",), "sqlite://", "c"),
        pause_on_error=pause,
    )


def reject_bad(record: Any) -> RecordError | None:
    if record["LastName"] == "BAD":
        return RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION", "no BADs", ("LastName",))
    return None


def make(
    rows: list[SourceRow], batch_size: int = 200, **policy: Any
) -> tuple[InMemoryStore, InMemorySink, Exporter]:
    store = InMemoryStore({"contacts": rows})
    sink = InMemorySink([reject_bad])
    exporter = Exporter(
        store,
        sink,
        ExportPolicy(batch_size=batch_size, **policy),
        FakeClock(),
        rng=random.Random(1),
    )
    return store, sink, exporter


def test_exports_every_row_in_order_and_advances_the_position() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 8)], batch_size=3)
    result = exporter.export_stream(plan(pause=True))
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.writes == [str(i) for i in range(1, 8)]
    assert [len(ids) for _, ids in sink.requests] == [3, 3, 1]
    assert store.load_state("contacts").position == row(7).position
    assert (result.counts.read, result.counts.exported, result.counts.failed) == (7, 7, 0)
    # A second run finds nothing new and sends nothing.
    again = exporter.export_stream(plan(pause=True))
    assert again.counts.read == 0 and len(sink.requests) == 3


def test_pause_halts_at_the_failing_record_and_writes_nothing_after_it() -> None:
    rows = [row(1), row(2), row(3, "BAD"), row(4), row(5)]
    store, sink, exporter = make(rows)
    result = exporter.export_stream(plan(pause=True))

    assert result.outcome is RunOutcome.PAUSED
    assert sink.writes == ["1", "2"]  # the prefix before the culprit, nothing after
    assert all(aon for aon, _ in sink.requests)
    state = store.load_state("contacts")
    assert state.position == row(2).position
    assert state.paused is not None and state.paused.record_key == "3"
    assert state.paused.error_code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    [err] = store.open_error_rows()
    assert (err.record_key, err.attempts) == ("3", 1)

    # The next run retries the paused record only, and bumps its episode.
    before = len(sink.requests)
    again = exporter.export_stream(plan(pause=True))
    assert again.outcome is RunOutcome.PAUSED
    assert sink.requests[before:] == [(True, ["3"])]
    assert store.open_error_rows()[0].attempts == 2

    # Fixed at the source: the record goes, the pause is released, the rest follows.
    store.put_row("contacts", row(3, "Fixed"))
    fixed = exporter.export_stream(plan(pause=True))
    assert fixed.outcome is RunOutcome.COMPLETED
    assert sink.writes == ["1", "2", "3", "4", "5"]
    assert store.load_state("contacts").paused is None
    assert store.open_error_rows() == []
    assert store.errors[0].status == "resolved"


def test_skip_mode_logs_the_failure_and_moves_on() -> None:
    rows = [row(1), row(2, "BAD"), row(3)]
    store, sink, exporter = make(rows)
    result = exporter.export_stream(plan(pause=False))
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.writes == ["1", "3"]
    assert not any(aon for aon, _ in sink.requests)
    assert (result.counts.exported, result.counts.failed, result.counts.paused) == (2, 1, 0)
    assert store.load_state("contacts").position == row(3).position
    assert [e.record_key for e in store.open_error_rows()] == ["2"]


def test_lock_row_is_retried_and_never_reaches_export_errors() -> None:
    store, sink, exporter = make([row(1), row(2), row(3)])
    sink.locks["2"] = 2
    result = exporter.export_stream(plan(pause=True))
    assert result.outcome is RunOutcome.COMPLETED
    assert sorted(sink.records) == ["1", "2", "3"]
    assert store.errors == []
    # The records before the lock go first, and their call stands in for a wait; the locked
    # record then waits once before its second retry.
    assert [keys for _, keys in sink.requests] == [["1", "2", "3"], ["1"], ["2", "3"], ["2", "3"]]
    assert isinstance(exporter.clock, FakeClock)
    assert len(exporter.clock.sleeps) == 1


def test_lock_row_that_outlasts_its_budget_is_logged_with_its_code() -> None:
    store, sink, exporter = make([row(1), row(2)])
    sink.locks["2"] = 99
    result = exporter.export_stream(plan(pause=False))
    assert result.outcome is RunOutcome.COMPLETED
    [err] = store.open_error_rows()
    assert (err.record_key, err.error_code) == ("2", "UNABLE_TO_LOCK_ROW")


def test_request_failure_fails_the_run_keeps_the_position_and_logs_no_record() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 6)], batch_size=2)
    real = sink.upsert

    def second_call_fails(*args: Any, **kwargs: Any) -> Any:
        if len(sink.requests) == 1:
            sink.requests.append((True, []))
            raise RequestLimitError("TotalRequests Limit exceeded.")
        return real(*args, **kwargs)

    sink.upsert = second_call_fails  # type: ignore[method-assign]
    result = exporter.export_stream(plan(pause=True))
    assert result.outcome is RunOutcome.FAILED
    assert "TotalRequests" in (result.error or "")
    assert store.load_state("contacts").position == row(2).position
    assert store.errors == []
    assert store.runs[-1].outcome is RunOutcome.FAILED
    # The next run resumes where the last confirmed record left off.
    resumed = exporter.export_stream(plan(pause=True))
    assert resumed.outcome is RunOutcome.COMPLETED
    assert sorted(sink.records) == ["1", "2", "3", "4", "5"]


def test_configuration_error_stops_without_flooding_export_errors() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 50)])
    sink.rules.insert(0, lambda r: RecordError("INVALID_FIELD", "No such column 'X__c'"))
    result = exporter.export_stream(plan(pause=False))
    assert result.outcome is RunOutcome.FAILED
    assert "INVALID_FIELD" in (result.error or "")
    assert store.errors == []
    assert store.load_state("contacts").position is None


def test_a_flood_of_identical_record_errors_stops_the_run() -> None:
    rows = [row(i, "BAD") for i in range(1, 300)]
    store, _, exporter = make(rows, batch_size=20, max_identical_errors=30)
    result = exporter.export_stream(plan(pause=False))
    assert result.outcome is RunOutcome.FAILED
    assert "configuration problem" in (result.error or "")
    assert len(store.errors) == 40  # two batches acknowledged, then the stop


def test_null_key_and_nan_become_record_errors_naming_the_record() -> None:
    rows = [
        SourceRow(None, T0, {"last_name": "x"}),
        SourceRow(2, T0 + timedelta(1), {"last_name": float("nan")}),
        row(3, minutes=60 * 24 * 3),
    ]
    store, sink, exporter = make(rows)
    result = exporter.export_stream(plan(pause=False))
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.writes == ["3"]
    codes = {e.record_key: e.error_code for e in store.open_error_rows()}
    assert codes == {
        "(id is NULL; updated_at = 2026-01-01 00:00:00+00:00)": "CRM_EXPORT_NULL_KEY",
        "2": "CRM_EXPORT_INVALID_VALUE",
    }


def null_key_row(minutes: int, last_name: str = "Nokey") -> SourceRow:
    at = T0 + timedelta(minutes=minutes)
    return SourceRow(None, at, {"last_name": last_name, "updated_at": at})


def test_a_real_key_spelled_like_a_null_key_is_a_different_record() -> None:
    # The string "None" is a key like any other; only a NULL key is a NULL key.
    store, sink, exporter = make([SourceRow("None", T0, {"last_name": "x"}), null_key_row(1)])
    exporter.export_stream(plan(pause=False))
    assert sink.writes == ["None"]
    (error,) = store.open_error_rows()
    assert error.record_key == "(id is NULL; updated_at = 2026-01-01 00:01:00+00:00)"


def test_a_null_key_pauses_until_the_row_gets_a_key_then_it_goes_out_in_order() -> None:
    store, sink, exporter = make([row(1), null_key_row(2), row(3)])
    first = exporter.export_stream(plan(pause=True))
    assert first.outcome is RunOutcome.PAUSED
    assert first.paused is not None and first.paused.error_code == "CRM_EXPORT_NULL_KEY"

    # Still NULL: still paused, the same error bumped, nothing behind it sent.
    again = exporter.export_stream(plan(pause=True))
    assert again.outcome is RunOutcome.PAUSED
    assert [e.attempts for e in store.errors] == [2]
    assert sink.writes == ["1"]

    # Given a key, at the same order value: released, sent next, then the rest.
    store.delete_row("contacts", None)
    store.put_row("contacts", row(2, minutes=2))
    fixed = exporter.export_stream(plan(pause=True))
    assert fixed.outcome is RunOutcome.COMPLETED
    assert sink.writes == ["1", "2", "3"]
    assert [(e.status, e.error_code) for e in store.errors] == [("resolved", "CRM_EXPORT_NULL_KEY")]


def test_reexport_keeps_a_null_key_open_and_sends_the_row_once_it_has_a_key() -> None:
    store, sink, exporter = make([row(1), null_key_row(2), row(3)])
    exporter.export_stream(plan(pause=False))
    assert sink.writes == ["1", "3"]

    exporter.reexport_stream(plan(pause=False))
    (error,) = store.errors
    assert (error.status, error.attempts) == ("open", 2)

    # Fixed without a new updated_at: behind the position, so only the re-export finds it.
    store.delete_row("contacts", None)
    store.put_row("contacts", row(2, "Keyed", minutes=2))
    result = exporter.reexport_stream(plan(pause=False))
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.records["2"]["LastName"] == "Keyed"
    assert [e.status for e in store.errors] == ["resolved"]


def test_two_rows_with_one_key_in_a_batch_send_the_later_one_only() -> None:
    rows = [row(1, "Old", minutes=1), row(2), row(1, "New", minutes=3)]
    store, sink, exporter = make([])
    store.rows["contacts"] = rows  # put_row would replace: a source can hold both
    result = exporter.export_stream(plan(pause=True))
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.records["1"]["LastName"] == "New"
    assert sorted(sink.writes) == ["1", "2"]
    c = result.counts
    assert (c.read, c.exported, c.superseded, c.failed) == (3, 2, 1, 0)
    assert store.errors == []


@pytest.mark.parametrize("pause", [True, False])
def test_a_null_order_by_is_a_record_error_that_never_pauses(pause: bool) -> None:
    unordered = SourceRow(9, None, {"last_name": "x", "updated_at": None})
    store, sink, exporter = make([row(1), unordered, row(2)])
    result = exporter.export_stream(plan(pause=pause))
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.writes == ["1", "2"]
    (error,) = store.open_error_rows()
    assert (error.record_key, error.error_code) == ("9", "CRM_EXPORT_NULL_ORDER_BY")
    assert "'updated_at' is NULL" in error.error_message

    # Written after the position moved on: the next run still reports it.
    store.put_row("contacts", SourceRow(10, None, {"last_name": "y", "updated_at": None}))
    exporter.export_stream(plan(pause=pause))
    attempts = {e.record_key: e.attempts for e in store.open_error_rows()}
    assert attempts == {"9": 2, "10": 1}

    # Given an order value, it is exported in order and its error resolved.
    store.put_row("contacts", row(9, "x", minutes=10))
    store.put_row("contacts", row(10, "y", minutes=11))
    exporter.export_stream(plan(pause=pause))
    assert sink.writes == ["1", "2", "9", "10"]
    assert store.open_error_rows() == []


def test_reexport_resolves_fixed_records_and_closes_deleted_ones() -> None:
    rows = [row(1, "BAD"), row(2, "BAD"), row(3, "BAD"), row(4)]
    store, sink, exporter = make(rows)
    exporter.export_stream(plan(pause=False))
    assert len(store.open_error_rows()) == 3
    store.put_row("contacts", row(1, "Fixed"))
    store.delete_row("contacts", 2)
    result = exporter.reexport_stream(plan(pause=False))
    assert result.job_id == "CRMExport_ExportError"
    assert result.outcome is RunOutcome.COMPLETED
    by_key = {e.record_key: (e.status, e.attempts) for e in store.errors}
    assert by_key == {"1": ("resolved", 1), "2": ("source_deleted", 1), "3": ("open", 2)}
    assert sink.records["1"]["LastName"] == "Fixed"


def test_reexport_of_the_paused_record_releases_the_pause() -> None:
    store, sink, exporter = make([row(1), row(2, "BAD"), row(3)])
    exporter.export_stream(plan(pause=True))
    store.put_row("contacts", row(2, "Fixed"))
    exporter.reexport_stream(plan(pause=True))
    assert store.load_state("contacts").paused is None
    exporter.export_stream(plan(pause=True))
    assert sink.writes == ["1", "2", "3"]  # record 2 not sent twice


def test_turning_pause_off_skips_the_paused_record() -> None:
    store, sink, exporter = make([row(1), row(2, "BAD"), row(3)])
    exporter.export_stream(plan(pause=True))
    result = exporter.export_stream(plan(pause=False))
    assert result.outcome is RunOutcome.COMPLETED
    assert store.load_state("contacts").paused is None
    assert sink.writes == ["1", "3"]
    assert store.open_error_rows()[0].attempts == 2


def test_a_crash_while_acknowledging_loses_nothing_and_counts_nothing_twice() -> None:
    store, sink, exporter = make([row(i) for i in range(1, 5)], batch_size=2)
    store.fail_next_ack = RuntimeError("power cut")
    first = exporter.export_stream(plan(pause=True))
    assert first.outcome is RunOutcome.FAILED
    assert store.load_state("contacts").position is None
    assert store.runs[0].counts.exported == 0
    second = exporter.export_stream(plan(pause=True))
    assert second.outcome is RunOutcome.COMPLETED
    assert sorted(sink.records) == ["1", "2", "3", "4"]
    assert store.runs[1].counts.exported == 4


def test_terminal_request_error_fails_the_run_with_its_message() -> None:
    _, sink, exporter = make([row(1)])
    sink.request_faults.append(SalesforceConfigurationError("invalid_client"))
    result = exporter.export_stream(plan(pause=True))
    assert result.outcome is RunOutcome.FAILED and "invalid_client" in (result.error or "")


@pytest.mark.parametrize("pause", [True, False])
def test_backoff_between_record_retries_is_bounded(pause: bool) -> None:
    _, sink, exporter = make([row(1)], record_retry=Backoff(3, 60, 1.0, 4.0))
    sink.locks["1"] = 99
    exporter.export_stream(plan(pause=pause))
    assert isinstance(exporter.clock, FakeClock)
    sleeps = exporter.clock.sleeps
    assert len(sleeps) == 2 and all(0 <= s <= 4.0 for s in sleeps)


def test_a_success_between_two_failures_breaks_the_streak_inside_a_batch() -> None:
    # Every other record is rejected with the same error: never two in a row.
    rows = [row(i, "BAD" if i % 2 else "Smith") for i in range(1, 201)]
    store, sink, exporter = make(rows, batch_size=50, max_identical_errors=3)
    result = exporter.export_stream(plan(pause=False))
    assert result.outcome is RunOutcome.COMPLETED
    assert len(store.open_error_rows()) == 100 and len(sink.records) == 100


def test_a_streak_runs_on_across_batches() -> None:
    # Two failures end one batch and one starts the next: three in a row.
    keys = {4, 5, 6}
    rows = [row(i, "BAD" if i in keys else "Smith") for i in range(1, 10)]
    _, _, exporter = make(rows, batch_size=5, max_identical_errors=3)
    result = exporter.export_stream(plan(pause=False))
    assert result.outcome is RunOutcome.FAILED
    assert "3 records in a row" in (result.error or "")


@pytest.mark.parametrize("pause", [True, False])
def test_record_retries_stop_at_the_elapsed_time_budget(pause: bool) -> None:
    # Attempts alone would allow 99 tries; the time budget of 5 s ends them first.
    store, sink, exporter = make([row(1), row(2)], record_retry=Backoff(99, 5.0, 1.0, 4.0))
    sink.locks["1"] = 10_000
    result = exporter.export_stream(plan(pause=pause))
    clock = exporter.clock
    assert isinstance(clock, FakeClock)
    assert clock.now <= 5.0
    assert len(sink.requests) < 99
    [err] = store.open_error_rows()
    assert (err.record_key, err.error_code) == ("1", "UNABLE_TO_LOCK_ROW")
    assert result.outcome is (RunOutcome.PAUSED if pause else RunOutcome.COMPLETED)


# -- a value Salesforce's JSON parser cannot read: the whole request is refused ---------------


def unreadable_date(record: Any) -> RecordError | None:
    """As a real org answers a date field given words: a 400 for the whole request."""
    if record["LastName"].startswith("DATE:"):
        value = record["LastName"][5:]
        return RecordError(
            "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of date from VALUE_STRING value {value} or request "
            "may be missing a required field at [line:1, column:99]",
        )
    return None


def refusing(
    rows: list[SourceRow], *, pins: bool = True, batch_size: int = 200, **policy: Any
) -> tuple[InMemoryStore, InMemorySink, Exporter]:
    store, sink, exporter = make(rows, batch_size=batch_size, **policy)
    sink.payload_rules.append(unreadable_date)
    sink.pins_culprit = pins
    return store, sink, exporter


@pytest.mark.parametrize("pins", [True, False], ids=["pinned", "bisected"])
def test_pause_mode_writes_the_records_before_a_refused_one_and_halts_at_it(pins: bool) -> None:
    rows = [row(i, "DATE:soon" if i == 137 else "Smith") for i in range(1, 201)]
    store, sink, exporter = refusing(rows, pins=pins)
    result = exporter.export_stream(plan(pause=True))

    assert result.outcome is RunOutcome.PAUSED
    assert sink.writes == [str(i) for i in range(1, 137)]  # in order, nothing after 137
    assert all(aon for aon, _ in sink.requests)
    [err] = store.open_error_rows()
    assert (err.record_key, err.error_code) == ("137", "JSON_PARSER_ERROR")
    assert "value soon or request may be missing" in err.error_message
    assert err.payload is not None and err.payload["LastName"] == "DATE:soon"
    state = store.load_state("contacts")
    assert state.position == row(136).position
    assert state.paused is not None and state.paused.error_code == "JSON_PARSER_ERROR"
    # Pinned: the refused call, then the 136 before it. Bisected: one call per halving.
    assert len(sink.requests) == (2 if pins else 1 + 8)
    # ... plus one describe of the object for the run.
    calls = len(sink.requests) + len(sink.described)
    assert result.counts.api_calls == calls == store.runs[0].counts.api_calls

    # The paused record alone, every run, until its source row is fixed.
    again = exporter.export_stream(plan(pause=True))
    assert again.outcome is RunOutcome.PAUSED and sink.requests[-1] == (True, ["137"])
    assert store.open_error_rows()[0].attempts == 2
    store.put_row("contacts", row(137, "Fixed"))
    assert exporter.export_stream(plan(pause=True)).outcome is RunOutcome.COMPLETED
    assert sink.writes == [str(i) for i in range(1, 201)]
    assert [e.status for e in store.errors] == ["resolved"]


@pytest.mark.parametrize("pins", [True, False], ids=["pinned", "bisected"])
def test_skip_mode_exports_the_rest_of_the_batch_around_refused_records(pins: bool) -> None:
    bad = {3, 77, 78, 190}
    rows = [row(i, "DATE:x" if i in bad else "Smith") for i in range(1, 201)]
    store, sink, exporter = refusing(rows, pins=pins)
    result = exporter.export_stream(plan(pause=False))

    assert result.outcome is RunOutcome.COMPLETED
    assert sorted(sink.records, key=int) == [str(i) for i in range(1, 201) if i not in bad]
    assert {e.record_key: e.error_code for e in store.open_error_rows()} == dict.fromkeys(
        map(str, sorted(bad)), "JSON_PARSER_ERROR"
    )
    c = result.counts
    assert (c.read, c.exported, c.failed, c.paused, c.superseded) == (200, 196, 4, 0, 0)
    assert store.load_state("contacts").position == row(200).position
    # Pinned: each refused record costs the one call that resends the others. Bisected: at
    # most two calls per halving for each.
    if pins:
        assert len(sink.requests) == 1 + len(bad)
    else:
        assert len(sink.requests) <= 1 + len(bad) * 2 * 8
    assert result.counts.api_calls == len(sink.requests) + len(sink.described)


def test_a_record_error_before_a_refused_record_is_where_pause_mode_halts() -> None:
    rows = [row(1), row(2, "BAD"), row(3), row(4, "DATE:x"), row(5)]
    store, sink, _ = refusing(rows)
    exporter = Exporter(store, sink, ExportPolicy(), FakeClock(), rng=random.Random(1))
    result = exporter.export_stream(plan(pause=True))
    assert result.outcome is RunOutcome.PAUSED
    assert result.paused is not None and result.paused.record_key == "2"
    assert sink.writes == ["1"]


def test_a_lock_before_a_refused_record_is_retried_and_order_holds() -> None:
    rows = [row(i, "DATE:x" if i == 5 else "Smith") for i in range(1, 8)]
    store, sink, exporter = refusing(rows)
    sink.locks["2"] = 1
    result = exporter.export_stream(plan(pause=True))
    assert result.outcome is RunOutcome.PAUSED
    assert sink.writes == ["1", "2", "3", "4"]
    assert [e.error_code for e in store.open_error_rows()] == ["JSON_PARSER_ERROR"]


@pytest.mark.parametrize("pins", [True, False], ids=["pinned", "bisected"])
def test_refused_records_in_a_row_are_a_flood_that_stops_within_bounded_calls(
    pins: bool,
) -> None:
    # Every record holds a value the field cannot take: the mapping is wrong, not the rows.
    rows = [row(i, f"DATE:{i}/01/2026") for i in range(1, 201)]
    store, sink, exporter = refusing(rows, pins=pins, max_identical_errors=10)
    result = exporter.export_stream(plan(pause=False))

    assert result.outcome is RunOutcome.FAILED
    assert "10 records in a row failed with JSON_PARSER_ERROR" in (result.error or "")
    assert sink.records == {} and store.errors == []
    assert store.load_state("contacts").position is None
    # Pinned: the batch, then one call per record found. Bisected: the batch, halvings down
    # to the first record (8), then at most two per record; far from one per record (200).
    if pins:
        assert len(sink.requests) == 1 + 9
    else:
        assert len(sink.requests) <= 1 + 8 + 2 * 9
    assert result.counts.api_calls == len(sink.requests) + len(sink.described)


def test_refusals_too_dense_to_isolate_stop_after_one_call_per_record() -> None:
    # One record in two refused: never two in a row, but isolating them all, unpinned, would
    # cost more than sending every record alone.
    rows = [row(i, "DATE:x" if i % 2 else "Smith") for i in range(1, 201)]
    store, sink, exporter = refusing(rows, pins=False)
    result = exporter.export_stream(plan(pause=False))
    assert result.outcome is RunOutcome.FAILED
    assert "took 200 calls, one per record" in (result.error or "")
    assert len(sink.requests) == 1 + 200
    assert store.errors == [] and store.load_state("contacts").position is None


def test_a_refused_record_stays_in_export_errors_until_the_re_export_finds_it_fixed() -> None:
    rows = [row(1), row(2, "DATE:x"), row(3)]
    store, sink, exporter = refusing(rows)
    exporter.export_stream(plan(pause=False))
    exporter.reexport_stream(plan(pause=False))
    assert [(e.error_code, e.attempts) for e in store.open_error_rows()] == [
        ("JSON_PARSER_ERROR", 2)
    ]
    assert sink.requests[-1] == (False, ["2"])
    store.put_row("contacts", row(2, "Fixed"))
    exporter.reexport_stream(plan(pause=False))
    assert store.open_error_rows() == [] and sink.records["2"]["LastName"] == "Fixed"


def test_a_config_problem_found_at_run_time_names_its_key_in_the_result() -> None:
    _store, sink, exporter = make([row(1)])
    sink.request_faults.append(OrgMismatchError("salesforce.login_url", "does not resolve"))
    result = exporter.export_stream(plan(pause=True))
    assert result.outcome is RunOutcome.FAILED
    assert result.config_key == "salesforce.login_url"
    assert result.error == "salesforce.login_url: does not resolve"
    # Any other terminal problem leaves it unset: the CLI exits 1 for those.
    sink.request_faults.append(SalesforceConfigurationError("invalid_client"))
    assert exporter.export_stream(plan(pause=True)).config_key is None
