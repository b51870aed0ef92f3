"""SqlStore against real databases: SQLite and PostgreSQL (see conftest.py)."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crm_export.errors import SourceError, TerminalError, TransientError
from crm_export.ports import (
    UNCHANGED,
    BatchAck,
    PausedRecord,
    Position,
    RecordError,
    RecordFailure,
    RunOutcome,
    SourceRow,
    StreamSource,
)
from crm_export.store import INTERRUPTED_MESSAGE, SqlStore, advisory_runner_lock, migrations

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CreateSourceTable = Callable[..., None]  # the create_source_table fixture (conftest.py)


class Clock:
    """A clock the test moves by hand, so timestamps can be asserted exactly."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, minutes: int = 1) -> datetime:
        self.now += timedelta(minutes=minutes)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed_store(state_url: str, clock: Clock) -> Iterator[SqlStore]:
    with SqlStore(state_url, clock=clock) as s:
        yield s


def failure(key: str, code: str = "REQUIRED_FIELD_MISSING", message: str = "boom") -> RecordFailure:
    return RecordFailure(
        record_key=key,
        sobject="Contact",
        external_id="Legacy_Id__c",
        error=RecordError(code, message, ("LastName", "Email")),
        payload={"Legacy_Id__c": key, "LastName": None},
    )


def contacts(url: str, **kw: Any) -> StreamSource:
    fields: dict[str, Any] = {
        "name": "contacts",
        "key": "id",
        "order_by": "updated",
        "columns": ("id", "name"),
        "source_url": url,
        "table": "contacts",
    }
    fields.update(kw)
    return StreamSource(**fields)


def read_all(store: SqlStore, source: StreamSource, limit: int) -> list[list[SourceRow]]:
    """Page through the source the way the core does, batch by batch."""
    batches, after = [], None
    while batch := store.read_batch(source, after, limit):
        batches.append(batch)
        after = batch[-1].position
        assert len(batches) < 100, "read_batch does not advance"
    return batches


# ExportErrors episodes ----------------------------------------------------------------------


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


# Positions and pauses ---------------------------------------------------------------------

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
    store.acknowledge(BatchAck("contacts", run, read=1))  # both UNCHANGED
    state = store.load_state("contacts")
    assert state.position == Position("2026-01-01", 6)
    assert state.paused == pause

    store.acknowledge(BatchAck("contacts", run, pause=None, position=UNCHANGED))
    state = store.load_state("contacts")
    assert (state.paused, state.position) == (None, Position("2026-01-01", 6))

    store.acknowledge(BatchAck("contacts", run, position=None))
    assert store.load_state("contacts").position is None


def test_clear_pause_releases_a_paused_stream(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    pause = PausedRecord("7", T0, "X", "y")
    store.acknowledge(BatchAck("contacts", run, pause=pause, position=Position(1, 1)))
    assert store.clear_pause("contacts") is True
    assert store.clear_pause("contacts") is False
    assert store.load_state("contacts").paused is None
    assert store.load_state("contacts").position == Position(1, 1)


# Runs -------------------------------------------------------------------------------------


def test_counters_add_up_and_finish_closes_the_run(timed_store: SqlStore, clock: Clock) -> None:
    store = timed_store
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, read=200, exported=199, failed=1, api_calls=3))
    store.acknowledge(BatchAck("contacts", run, read=50, exported=48, failed=2, skipped=2))
    store.acknowledge(BatchAck("contacts", run, api_calls=1))
    finished = clock.tick()
    store.finish_run(run, RunOutcome.FAILED, "Salesforce said no")

    row = store.get_run(run)
    assert row is not None
    assert (
        row["records_read"],
        row["records_exported"],
        row["records_failed"],
        row["records_skipped"],
        row["api_calls"],
    ) == (250, 247, 3, 2, 4)
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


def test_list_runs_newest_first(store: SqlStore) -> None:
    ids = [store.begin_run("CRMExport", s) for s in ("contacts", "accounts", "contacts")]
    assert [r["id"] for r in store.list_runs()] == ids[::-1]
    assert [r["id"] for r in store.list_runs(stream="contacts", limit=1)] == [ids[2]]


def test_stream_overview(timed_store: SqlStore) -> None:
    store = timed_store
    run = store.begin_run("CRMExport", "contacts")
    pause = PausedRecord("7", T0, "INVALID_EMAIL", "bad email")
    store.acknowledge(
        BatchAck(
            "contacts",
            run,
            position=Position("2026-01-01", 6),
            pause=pause,
            failures=[failure("7"), failure("9")],
        )
    )
    store.finish_run(run, RunOutcome.PAUSED)
    other = store.begin_run("CRMExport", "accounts")

    overview = {o["stream"]: o for o in store.stream_overview()}
    assert list(overview) == ["accounts", "contacts"]
    contacts_row = overview["contacts"]
    assert contacts_row["position"] == Position("2026-01-01", 6)
    assert contacts_row["paused"] == pause
    assert contacts_row["open_errors"] == 2
    assert contacts_row["last_run"]["outcome"] == "paused"
    assert contacts_row["last_run"]["finished_at"] == T0
    accounts_row = overview["accounts"]
    assert (accounts_row["position"], accounts_row["open_errors"]) == (None, 0)
    assert accounts_row["last_run"]["id"] == other
    assert accounts_row["last_run"]["outcome"] == "running"


def test_list_errors_filters(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, failures=[failure("1", "A"), failure("2", "B")]))
    store.acknowledge(BatchAck("accounts", run, failures=[failure("3", "A")]))
    store.acknowledge(BatchAck("contacts", run, resolved_keys=["1"]))
    assert [r["record_key"] for r in store.list_errors(code="A")] == ["3"]
    assert [r["record_key"] for r in store.list_errors(code="A", include_resolved=True)] == [
        "1",
        "3",
    ]
    assert [r["record_key"] for r in store.list_errors(stream="contacts")] == ["2"]
    assert len(store.list_errors(include_resolved=True, limit=2)) == 2


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


# Atomicity --------------------------------------------------------------------------------


def test_acknowledge_is_all_or_nothing(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(
        BatchAck("contacts", run, position=Position(1, 1), failures=[failure("1")], read=1)
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
                read=5,
            )
        )

    assert (store.load_state("contacts"), store.list_errors(include_resolved=True)) == before
    row = store.get_run(run)
    assert row is not None and row["records_read"] == 1


def test_acknowledge_for_an_unknown_run_writes_nothing(store: SqlStore) -> None:
    with pytest.raises(LookupError, match="no export run with id 12345"):
        store.acknowledge(BatchAck("contacts", 12345, position=Position(1, 1), read=1))
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
                    BatchAck(stream, run, position=Position(i, i), failures=[failure("k")], read=1)
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


# Reading sources ----------------------------------------------------------------------------

BIG = 3_000_000_000  # beyond INTEGER: binds must not be cast to a 32-bit type


def contacts_table(create: CreateSourceTable, url: str, rows: list[dict[str, Any]]) -> None:
    create(
        url,
        "contacts",
        {"id": sa.BigInteger(), "updated": sa.Integer(), "name": sa.String(50)},
        rows,
        primary_key="id",
    )


def test_read_batch_pages_in_order_with_ties_broken_by_key(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    rows = [
        {"id": BIG + 5, "updated": 2, "name": "e"},
        {"id": BIG + 1, "updated": 3, "name": "a"},
        {"id": BIG + 3, "updated": 2, "name": "c"},
        {"id": BIG + 2, "updated": 1, "name": "b"},
        {"id": BIG + 4, "updated": 2, "name": "d"},
        {"id": BIG + 7, "updated": 1, "name": "g"},
        {"id": BIG + 6, "updated": 3, "name": "f"},
    ]
    contacts_table(create_source_table, source_url, rows)
    source = contacts(source_url)

    batches = read_all(store, source, limit=3)

    assert [len(b) for b in batches] == [3, 3, 1]
    got = [(r.order_value, r.key - BIG) for b in batches for r in b]
    assert got == [(1, 2), (1, 7), (2, 3), (2, 4), (2, 5), (3, 1), (3, 6)]
    first = batches[0][0]
    assert first.values == {"id": BIG + 2, "name": "b"}
    assert first.record_key == str(BIG + 2)


def test_read_batch_resumes_after_a_position_and_sees_new_rows(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(
        create_source_table, source_url, [{"id": i, "updated": 1, "name": "x"} for i in (1, 2)]
    )
    source = contacts(source_url)
    done = store.read_batch(source, None, 10)
    engine = sa.create_engine(source_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO contacts (id, updated, name) VALUES (0, 5, 'late'), (3, 1, 'tie')"
            )
    finally:
        engine.dispose()
    after = store.read_batch(source, done[-1].position, 10)
    assert [(r.key, r.values["name"]) for r in after] == [(3, "tie"), (0, "late")]
    assert store.count_after(source, done[-1].position) == 2
    assert store.count_after(source, None) == 4


def test_read_batch_from_a_query_with_colons_in_it(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(
        create_source_table,
        source_url,
        [{"id": 1, "updated": 1, "name": "x"}, {"id": 2, "updated": 2, "name": ":named"}],
    )
    query = (
        "SELECT id, updated, name || ' at 10:30' AS label FROM contacts WHERE name <> ':nobody';  "
    )
    source = contacts(source_url, table=None, query=query, columns=("label",))
    rows = store.read_batch(source, None, 10)
    assert [(r.key, r.values) for r in rows] == [
        (1, {"label": "x at 10:30"}),
        (2, {"label": ":named at 10:30"}),
    ]
    assert store.read_batch(source, rows[0].position, 10) == rows[1:]


def test_null_order_by_rows_are_read_first(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(
        create_source_table,
        source_url,
        [
            {"id": 5, "updated": None, "name": "n5"},
            {"id": 1, "updated": 1, "name": "a"},
            {"id": 2, "updated": None, "name": "n2"},
            {"id": 3, "updated": 0, "name": "c"},
        ],
    )
    source = contacts(source_url)
    batches = read_all(store, source, limit=1)
    assert [(r.order_value, r.key) for b in batches for r in b] == [
        (None, 2),
        (None, 5),
        (0, 3),
        (1, 1),
    ]
    assert store.count_after(source, Position(None, 2)) == 3
    assert store.count_after(source, Position(0, 3)) == 1


def test_rows_with_a_null_key_come_back_and_are_not_lost_at_a_batch_edge(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    create_source_table(
        source_url,
        "contacts",
        {"id": sa.Integer(), "updated": sa.Integer(), "name": sa.String(50)},
        [
            {"id": 1, "updated": 1, "name": "a"},
            {"id": None, "updated": 1, "name": "null-1"},
            {"id": None, "updated": 1, "name": "null-2"},
            {"id": 2, "updated": 2, "name": "b"},
        ],
    )
    source = contacts(source_url)
    batches = read_all(store, source, limit=1)
    # Both NULL-key rows share one order value: the first batch grows to hold both.
    assert [sorted(str(r.values["name"]) for r in b) for b in batches] == [
        ["null-1", "null-2"],
        ["a"],
        ["b"],
    ]
    assert all(r.key is None for r in batches[0])
    assert store.count_after(source, Position(1, None)) == 2


def test_read_by_keys_with_an_integer_key(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(
        create_source_table,
        source_url,
        [{"id": i, "updated": i % 3, "name": f"n{i}"} for i in range(1, 1201)]
        + [{"id": BIG, "updated": 0, "name": "big"}],
    )
    source = contacts(source_url)
    found = store.read_by_keys(source, ["1", "1200", str(BIG), "007", " 2", "abc", "1.0"])
    assert {k: r.values["name"] for k, r in found.items()} == {
        "1": "n1",
        "1200": "n1200",
        str(BIG): "big",
    }
    # More keys than one IN list holds.
    every = store.read_by_keys(source, [str(i) for i in range(1, 1201)])
    assert len(every) == 1200
    assert store.read_by_keys(source, []) == {}


def test_read_by_keys_with_a_text_key_and_from_a_query(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    create_source_table(
        source_url,
        "contacts",
        {"id": sa.String(20), "updated": sa.Integer(), "name": sa.String(50)},
        [
            {"id": "A-1", "updated": 1, "name": "a"},
            {"id": "ünï:2", "updated": 1, "name": "u"},
            {"id": "10", "updated": 1, "name": "ten"},
        ],
        primary_key="id",
    )
    for source in (
        contacts(source_url),
        contacts(source_url, table=None, query="SELECT id, updated, name FROM contacts"),
    ):
        found = store.read_by_keys(source, ["A-1", "ünï:2", "10", "missing"])
        assert {k: r.values["name"] for k, r in found.items()} == {
            "A-1": "a",
            "ünï:2": "u",
            "10": "ten",
        }


def test_read_by_keys_from_a_query_casts_an_integer_key(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(create_source_table, source_url, [{"id": 42, "updated": 1, "name": "x"}])
    source = contacts(source_url, table=None, query="SELECT * FROM contacts")
    assert list(store.read_by_keys(source, ["42", "43"])) == ["42"]


def test_undecodable_sqlite_text_comes_back_as_bytes(tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    migrations.upgrade(state)
    raw = sqlite3.connect(tmp_path / "source.db")
    raw.execute("CREATE TABLE contacts (id INTEGER PRIMARY KEY, updated INTEGER, name TEXT)")
    raw.execute("INSERT INTO contacts VALUES (1, 1, 'ok'), (2, 1, CAST(X'FF41' AS TEXT))")
    raw.execute("INSERT INTO contacts VALUES (3, 1, 'fine')")
    raw.commit()
    raw.close()
    source = contacts(f"sqlite:///{tmp_path / 'source.db'}")
    with SqlStore(state) as store:
        rows = store.read_batch(source, None, 10)
        assert [r.values["name"] for r in rows] == ["ok", b"\xffA", "fine"]
        assert store.read_by_keys(source, ["2"])["2"].values["name"] == b"\xffA"


def test_a_source_shared_with_the_state_database(state_url: str) -> None:
    engine = sa.create_engine(state_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE contacts (id INTEGER, updated INTEGER, name TEXT)")
            conn.exec_driver_sql("INSERT INTO contacts VALUES (1, 1, 'a')")
    finally:
        engine.dispose()
    with SqlStore(state_url) as store:
        source = contacts(state_url)
        store.check_source(source)
        assert [r.key for r in store.read_batch(source, None, 10)] == [1]


# check_source -----------------------------------------------------------------------------


def test_check_source_accepts_a_good_table_and_query(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(create_source_table, source_url, [])
    store.check_source(contacts(source_url))
    store.check_source(
        contacts(source_url, table=None, query="SELECT id, updated, name FROM contacts")
    )


def test_check_source_names_a_missing_column(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(create_source_table, source_url, [])
    with pytest.raises(SourceError) as info:
        store.check_source(contacts(source_url, columns=("id", "emial")))
    assert str(info.value) == "stream 'contacts': column 'emial' does not exist in table contacts"

    query = "SELECT id, updated FROM contacts"
    with pytest.raises(SourceError, match="column 'name' does not exist in the query"):
        store.check_source(contacts(source_url, table=None, query=query))


def test_check_source_names_a_missing_table_and_a_broken_query(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(create_source_table, source_url, [])
    with pytest.raises(SourceError, match="stream 'contacts': table 'contatcs' does not exist"):
        store.check_source(contacts(source_url, table="contatcs"))
    with pytest.raises(SourceError, match="stream 'contacts': cannot read the source"):
        store.check_source(contacts(source_url, table=None, query="SELEC id FROM contacts"))


def test_an_unreachable_source_is_a_transient_error(store: SqlStore) -> None:
    # Nothing listens on port 1: the next run may well find the database back.
    source = contacts("postgresql+psycopg://crm:secret@127.0.0.1:1/nowhere")
    with pytest.raises(TransientError) as info:
        store.read_batch(source, None, 10)
    assert "secret" not in str(info.value)
    assert "stream 'contacts'" in str(info.value)


# PostgreSQL specifics -----------------------------------------------------------------------


@pytest.mark.postgres
def test_uuid_keys_page_and_are_found_by_text(
    postgres_state_url: str, create_source_table: CreateSourceTable
) -> None:
    ids = sorted(uuid.uuid4() for _ in range(5))
    create_source_table(
        postgres_state_url,
        "contacts",
        {"id": sa.Uuid(), "updated": sa.Integer(), "name": sa.String(50)},
        [{"id": u, "updated": 1, "name": str(n)} for n, u in enumerate(ids)],
        primary_key="id",
    )
    source = contacts(postgres_state_url)
    with SqlStore(postgres_state_url) as store:
        batches = read_all(store, source, limit=2)
        assert [r.key for b in batches for r in b] == ids
        found = store.read_by_keys(source, [str(ids[3]), "not-a-uuid", str(ids[3]).upper()])
        assert list(found) == [str(ids[3])]


@pytest.mark.postgres
def test_an_enum_order_by_column_pages(postgres_state_url: str) -> None:
    # psycopg returns enum values as str; binding them back as VARCHAR would fail with
    # "operator does not exist: tier > character varying".
    engine = sa.create_engine(postgres_state_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TYPE tier AS ENUM ('low', 'mid', 'high')")
            conn.exec_driver_sql("CREATE TABLE contacts (id int, updated tier, name text)")
            conn.exec_driver_sql(
                "INSERT INTO contacts VALUES (1, 'high', 'a'), (2, 'low', 'b'), (3, 'mid', 'c')"
            )
    finally:
        engine.dispose()
    with SqlStore(postgres_state_url) as store:
        batches = read_all(store, contacts(postgres_state_url), limit=1)
    assert [r.order_value for b in batches for r in b] == ["low", "mid", "high"]


@pytest.mark.postgres
def test_one_runner_holds_the_advisory_lock(postgres_state_url: str) -> None:
    first, second = (
        advisory_runner_lock(postgres_state_url),
        advisory_runner_lock(postgres_state_url),
    )
    try:
        assert first.acquire() is True
        assert first.acquire() is True  # re-entrant for its holder
        assert second.acquire() is False
        assert first.alive() is True and second.alive() is False

        # The server ends the holder's session (crash, network cut): the lock goes with it.
        admin = sa.create_engine(postgres_state_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
                )
        finally:
            admin.dispose()
        assert first.alive() is False
        assert second.acquire() is True
        first.release()
        assert second.alive() is True
    finally:
        first.release()
        second.release()


def test_a_schema_qualified_table_and_a_view_are_sources(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    # SQLite's own schema is "main"; on PostgreSQL, a schema of the user's.
    schema = "main" if source_url.startswith("sqlite") else "crm"
    engine = sa.create_engine(source_url)
    try:
        if schema == "crm":
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE SCHEMA crm")
        create_source_table(
            source_url,
            "contacts",
            {"id": sa.Integer(), "updated": sa.Integer(), "name": sa.String(50)},
            [{"id": 1, "updated": 1, "name": "a"}, {"id": 2, "updated": 2, "name": "b"}],
            primary_key="id",
            schema=schema,
        )
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE VIEW {schema}.recent AS SELECT * FROM {schema}.contacts WHERE id > 1"
            )
    finally:
        engine.dispose()
    for table, names in ((f"{schema}.contacts", ["a", "b"]), (f"{schema}.recent", ["b"])):
        source = contacts(source_url, table=table)
        store.check_source(source)
        assert [r.values["name"] for r in store.read_batch(source, None, 10)] == names
        assert list(store.read_by_keys(source, ["2"])) == ["2"]
    with pytest.raises(SourceError, match=f"table '{schema}.nothing' does not exist"):
        store.check_source(contacts(source_url, table=f"{schema}.nothing"))
