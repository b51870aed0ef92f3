"""The operator's queries (status, errors, resume) through SqlStore, on SQLite and
PostgreSQL."""

from __future__ import annotations

from crm_export.ports import (
    BatchAck,
    PausedRecord,
    Position,
    RunOutcome,
)
from crm_export.store import SqlStore
from tests.store.store_kit import T0, failure


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
