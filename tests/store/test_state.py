"""StateStore through SqlStore: ExportErrors episodes, positions and pauses, runs, and
the batch acknowledgement, on SQLite and PostgreSQL (see tests/conftest.py)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crm_export.errors import TerminalError
from crm_export.ports import (
    UNCHANGED,
    BatchAck,
    PausedRecord,
    Position,
    RecordError,
    RunCounts,
    RunOutcome,
)
from crm_export.store import INTERRUPTED_MESSAGE, SqlStore, migrations
from crm_export.store.state import COUNTER_COLUMNS
from tests.store.store_kit import T0, Clock, failure


def test_a_record_failing_again_bumps_its_open_row(timed_store: SqlStore, clock: Clock) -> None:
    store = timed_store
    run1 = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run1, failures=[failure("7", message="first")]))
    clock.tick()
    run2 = store.begin_run("CRMExport", "contacts")
    store.acknowledge(
        BatchAck("contacts", run2, failures=[failure("7", "INVALID_EMAIL", "second")])
    )

    [row] = store.list_errors(include_resolved=True)
    assert row["attempts"] == 2
    assert (row["error_code"], row["error_message"]) == ("INVALID_EMAIL", "second")
    assert row["error_fields"] == "LastName,Email"
    assert row["payload"] == '{"Legacy_Id__c": "7", "LastName": null}'
    assert (row["first_failed_at"], row["last_failed_at"]) == (T0, T0 + timedelta(minutes=1))
    assert (row["status"], row["resolved_at"], row["run_id"]) == ("open", None, run2)
    [open_error] = store.open_errors("contacts")
    assert (open_error.record_key, open_error.attempts) == ("7", 2)


def test_success_resolves_and_a_later_failure_opens_a_new_episode(
    timed_store: SqlStore, clock: Clock
) -> None:
    store = timed_store
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, failures=[failure("7"), failure("8")]))
    resolved_at = clock.tick()
    store.acknowledge(BatchAck("contacts", run, resolved_keys=["7", "never-failed"]))
    clock.tick()
    store.acknowledge(BatchAck("contacts", run, failures=[failure("7", "NEW_CODE")]))

    rows = store.list_errors(stream="contacts", include_resolved=True)
    assert [(r["record_key"], r["status"], r["attempts"]) for r in rows] == [
        ("7", "resolved", 1),
        ("8", "open", 1),
        ("7", "open", 1),
    ]
    assert rows[0]["resolved_at"] == resolved_at
    assert rows[2]["error_code"] == "NEW_CODE"
    # Default listing: open rows only.
    assert [r["record_key"] for r in store.list_errors()] == ["8", "7"]


def test_source_deleted_closes_the_open_row(store: SqlStore) -> None:
    run = store.begin_run("CRMExport_ExportError", "contacts")
    store.acknowledge(BatchAck("contacts", run, failures=[failure("7")]))
    store.acknowledge(BatchAck("contacts", run, source_deleted_keys=["7"]))
    [row] = store.list_errors(include_resolved=True)
    assert row["status"] == "source_deleted"
    assert row["resolved_at"] is not None
    assert store.open_errors("contacts") == []


def test_the_same_record_twice_in_one_batch_is_one_episode(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, failures=[failure("7", "A"), failure("7", "B")]))
    [row] = store.list_errors()
    assert (row["attempts"], row["error_code"]) == (2, "B")


def test_the_database_refuses_a_second_open_row_for_a_record(
    store: SqlStore, state_url: str
) -> None:
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, failures=[failure("7")]))
    engine = sa.create_engine(state_url)
    try:
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO exporterrors (stream, record_key, sobject, external_id, error_code,"
                " error_message, attempts, first_failed_at, last_failed_at, status)"
                " VALUES ('contacts', '7', 'Contact', 'x', 'X', 'y', 1, '2026-01-01',"
                " '2026-01-01', 'open')"
            )
    finally:
        engine.dispose()
    assert len(store.list_errors()) == 1


def test_open_errors_pages_by_id_per_stream(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, failures=[failure(str(k)) for k in range(5)]))
    store.acknowledge(BatchAck("accounts", run, failures=[failure("a")]))
    first = store.open_errors("contacts", limit=3)
    rest = store.open_errors("contacts", after_id=first[-1].id, limit=3)
    assert [e.record_key for e in first + rest] == ["0", "1", "2", "3", "4"]
    assert [e.id for e in first + rest] == sorted(e.id for e in first + rest)
    assert {e.stream for e in first + rest} == {"contacts"}


POSITION_VALUES: list[Any] = [
    "plain",
    "ünïcödé ✓ 'quoted' \"json\"",
    "",
    0,
    -5,
    2**63 + 10,
    1.5,
    0.1 + 0.2,
    float("inf"),
    Decimal("12.3400"),
    Decimal("-0.000001"),
    date(2024, 2, 29),
    datetime(2024, 1, 1, 10, 0, 0, 123456),
    datetime(2024, 1, 1, 10, 0, tzinfo=UTC),
    datetime(2024, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    time(10, 30, 15),
    b"\x00\xffraw",
    True,
    False,
    None,
    uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
]


def test_positions_round_trip_exactly(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    for value in POSITION_VALUES:
        store.acknowledge(BatchAck("contacts", run, position=Position(value, value)))
        loaded = store.load_state("contacts").position
        assert loaded is not None
        for got in (loaded.order_value, loaded.key):
            assert (type(got), got) == (type(value), value)
            if isinstance(value, datetime):
                assert got.utcoffset() == value.utcoffset()


def test_position_and_pause_change_only_when_asked(timed_store: SqlStore) -> None:
    store = timed_store
    assert store.load_state("contacts").position is None
    run = store.begin_run("CRMExport", "contacts")
    pause = PausedRecord("7", T0, "INVALID_EMAIL", "bad email")
    store.acknowledge(BatchAck("contacts", run, position=Position("2026-01-01", 6), pause=pause))
    store.acknowledge(BatchAck("contacts", run, counts=RunCounts(read=1)))  # both UNCHANGED
    state = store.load_state("contacts")
    assert state.position == Position("2026-01-01", 6)
    assert state.paused == pause

    store.acknowledge(BatchAck("contacts", run, pause=None, position=UNCHANGED))
    state = store.load_state("contacts")
    assert (state.paused, state.position) == (None, Position("2026-01-01", 6))

    store.acknowledge(BatchAck("contacts", run, position=None))
    assert store.load_state("contacts").position is None


def test_counters_add_up_and_finish_closes_the_run(timed_store: SqlStore, clock: Clock) -> None:
    store = timed_store
    run = store.begin_run("CRMExport", "contacts")
    counts = RunCounts(read=200, exported=190, unchanged=9, failed=1, api_calls=3, logins=1)
    store.acknowledge(BatchAck("contacts", run, counts=counts))
    counts = RunCounts(read=50, exported=45, failed=2, paused=1, superseded=2, late=3)
    store.acknowledge(BatchAck("contacts", run, counts=counts))
    store.acknowledge(BatchAck("contacts", run, counts=RunCounts(api_calls=1)))
    finished = clock.tick()
    # The calls of a batch that failed were never acknowledged: finish_run records them.
    tail = RunCounts(api_calls=5, logins=2)
    store.finish_run(run, RunOutcome.FAILED, "Salesforce said no", tail=tail)

    row = store.get_run(run)
    assert row is not None
    assert {name: row[name] for name in COUNTER_COLUMNS.values()} == {
        "records_read": 250,
        "records_exported": 235,
        "records_unchanged": 9,
        "records_failed": 3,
        "records_paused": 1,
        "records_superseded": 2,
        "records_late": 3,
        "api_calls": 9,
        "logins": 3,
    }
    assert (row["org_api_used"], row["org_api_max"]) == (None, None)
    assert (row["outcome"], row["error"]) == ("failed", "Salesforce said no")
    assert (row["started_at"], row["finished_at"]) == (T0, finished)
    assert row["job_id"] == "CRMExport"
    assert ":" in row["runner"]  # hostname:pid


def test_finish_run_of_an_unknown_run_raises(store: SqlStore) -> None:
    with pytest.raises(LookupError):
        store.finish_run(999, RunOutcome.COMPLETED)


def test_mark_interrupted_runs_closes_only_running_runs(timed_store: SqlStore) -> None:
    store = timed_store
    done = store.begin_run("CRMExport", "contacts")
    store.finish_run(done, RunOutcome.COMPLETED)
    stale = [store.begin_run("CRMExport", "contacts"), store.begin_run("CRMExport", "accounts")]

    assert store.mark_interrupted_runs() == 2
    assert store.mark_interrupted_runs() == 0
    for run_id in stale:
        row = store.get_run(run_id)
        assert row is not None
        assert (row["outcome"], row["error"]) == ("interrupted", INTERRUPTED_MESSAGE)
        assert row["finished_at"] == T0
    completed = store.get_run(done)
    assert completed is not None and completed["outcome"] == "completed"


def test_timestamps_come_back_aware_utc(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    ist = timezone(timedelta(hours=5, minutes=30))
    since = datetime(2026, 1, 5, 14, 30, tzinfo=ist)
    store.acknowledge(BatchAck("contacts", run, pause=PausedRecord("7", since, "X", "y")))
    paused = store.load_state("contacts").paused
    assert paused is not None
    assert paused.since == since
    assert paused.since.utcoffset() == timedelta(0)
    started = store.list_runs()[0]["started_at"]
    assert started.tzinfo is not None and started.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - started) < timedelta(minutes=5)


def test_acknowledge_is_all_or_nothing(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(
        BatchAck(
            "contacts",
            run,
            position=Position(1, 1),
            failures=[failure("1")],
            counts=RunCounts(read=1),
        )
    )
    before = (store.load_state("contacts"), store.list_errors(include_resolved=True))

    # The failure row violates NOT NULL: the last statements fail after the position,
    # the resolution and the first rows were already written in the transaction.
    broken = replace(failure("2"), error=RecordError("X", None))  # type: ignore[arg-type]
    with pytest.raises(sa.exc.IntegrityError):
        store.acknowledge(
            BatchAck(
                "contacts",
                run,
                position=Position(9, 9),
                pause=PausedRecord("2", T0, "X", "y"),
                resolved_keys=["1"],
                failures=[failure("3"), broken],
                fingerprints={"3": b"x" * 16},
                counts=RunCounts(read=5),
            )
        )

    assert (store.load_state("contacts"), store.list_errors(include_resolved=True)) == before
    assert store.fingerprint_count() == 0
    row = store.get_run(run)
    assert row is not None and row["records_read"] == 1


def test_acknowledge_for_an_unknown_run_writes_nothing(store: SqlStore) -> None:
    with pytest.raises(LookupError, match="no export run with id 12345"):
        store.acknowledge(
            BatchAck("contacts", 12345, position=Position(1, 1), counts=RunCounts(read=1))
        )
    assert store.load_state("contacts").position is None


def test_concurrent_writers_on_sqlite_neither_fail_nor_lose_updates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrations.upgrade(url)
    stores = [SqlStore(url), SqlStore(url)]
    run = stores[0].begin_run("CRMExport", "contacts")
    errors: list[BaseException] = []

    def work(store: SqlStore, stream: str) -> None:
        try:
            for i in range(40):
                store.acknowledge(
                    BatchAck(
                        stream,
                        run,
                        position=Position(i, i),
                        failures=[failure("k")],
                        counts=RunCounts(read=1),
                    )
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(s, name))
        for s, name in zip(stores, ("contacts", "accounts"), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        row = stores[0].get_run(run)
        assert row is not None and row["records_read"] == 80
        assert {e["stream"]: e["attempts"] for e in stores[1].list_errors()} == {
            "contacts": 40,
            "accounts": 40,
        }
    finally:
        for s in stores:
            s.close()


def test_an_in_memory_state_database_is_set_up_through_the_stores_engine() -> None:
    with SqlStore("sqlite://") as store:
        migrations.ensure_schema("sqlite://", store.engine)
        run = store.begin_run("CRMExport", "contacts")
        store.acknowledge(BatchAck("contacts", run, position=Position(1, 1)))
        assert store.load_state("contacts").position == Position(1, 1)


def test_only_sqlite_or_postgresql_keep_state() -> None:
    with pytest.raises(TerminalError, match="SQLite or PostgreSQL"):
        SqlStore("mysql+pymysql://u:secret@localhost/db")
