"""What the state database keeps for issue 13, on SQLite and PostgreSQL: fingerprints (written
only by an acknowledgement, never for a record with an open error), resync requests, the
org's API usage, and the lookback read of a source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from crm_export.ports import ApiUsage, BatchAck, Position, RunOutcome
from crm_export.store import SqlStore
from tests.store.store_kit import CreateSourceTable, contacts, failure

FP = {str(k): bytes([k % 256]) * 16 for k in range(1, 1201)}


def test_fingerprints_come_from_acknowledgements_and_are_looked_up_in_chunks(
    store: SqlStore,
) -> None:
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, fingerprints=FP))
    store.acknowledge(BatchAck("accounts", run, fingerprints={"1": b"a" * 16}))
    # 1,200 keys: more than one IN list of 500, one call.
    assert store.known_fingerprints("contacts", list(FP)) == FP
    assert store.known_fingerprints("accounts", ["1", "2"]) == {"1": b"a" * 16}
    # A newer acceptance replaces the fingerprint.
    store.acknowledge(BatchAck("contacts", run, fingerprints={"7": b"z" * 16}))
    assert store.known_fingerprints("contacts", ["7"]) == {"7": b"z" * 16}
    assert store.fingerprint_count() == 1201


def test_a_record_with_an_open_error_has_no_usable_fingerprint(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, fingerprints={"7": b"7" * 16, "8": b"8" * 16}))
    store.acknowledge(BatchAck("contacts", run, failures=[failure("7")]))
    assert store.known_fingerprints("contacts", ["7", "8"]) == {"8": b"8" * 16}
    # Once Salesforce accepts it again, it is skipped when unchanged again.
    store.acknowledge(BatchAck("contacts", run, resolved_keys=["7"], fingerprints=FP))
    assert store.known_fingerprints("contacts", ["7"]) == {"7": FP["7"]}


def test_a_resync_request_is_applied_by_one_acknowledgement(store: SqlStore) -> None:
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, position=Position(5, 5), fingerprints=FP))
    store.acknowledge(BatchAck("accounts", run, fingerprints={"1": b"a" * 16}))

    assert store.request_resync("contacts") == len(FP)
    assert store.load_state("contacts").resync_requested
    assert store.request_resync("never-ran") == 0  # a stream with no state yet

    store.acknowledge(
        BatchAck("contacts", run, position=None, forget_fingerprints=True, resync_requested=False)
    )
    state = store.load_state("contacts")
    assert (state.position, state.resync_requested) == (None, False)
    assert store.fingerprint_count("contacts") == 0
    assert store.fingerprint_count("accounts") == 1


def test_the_org_usage_a_run_saw_is_kept_for_the_next(store: SqlStore) -> None:
    assert store.last_api_usage() is None and store.api_usage() is None
    first = store.begin_run("CRMExport", "contacts")
    store.finish_run(first, RunOutcome.COMPLETED, usage=ApiUsage(120, 15000))
    quiet = store.begin_run("CRMExport", "contacts")
    store.finish_run(quiet, RunOutcome.COMPLETED)  # made no call: saw nothing
    assert store.last_api_usage() == ApiUsage(120, 15000)
    deferred = store.begin_run("CRMExport", "contacts")
    store.finish_run(deferred, RunOutcome.DEFERRED, usage=ApiUsage(12001, 15000))
    assert store.last_api_usage() == ApiUsage(12001, 15000)
    seen = store.api_usage()
    assert seen is not None and (seen["used"], seen["max"]) == (12001, 15000)
    row = store.get_run(deferred)
    assert row is not None and row["outcome"] == "deferred"


@pytest.mark.parametrize("as_text", [False, True], ids=["timestamp", "iso-text"])
def test_read_window_reads_behind_the_position_from_a_bound(
    store: SqlStore,
    source_url: str,
    create_source_table: CreateSourceTable,
    as_text: bool,
) -> None:
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def at(seconds: int) -> object:
        moment = t0 + timedelta(seconds=seconds)
        return moment.strftime("%Y-%m-%d %H:%M:%S") if as_text else moment

    kind = sa.Text() if as_text else sa.DateTime(timezone=True)
    rows = [{"id": i, "updated": at(i * 60), "name": f"n{i}"} for i in range(1, 21)]
    create_source_table(
        source_url,
        "contacts",
        {"id": sa.Integer(), "updated": kind, "name": sa.Text()},
        rows,
        primary_key="id",
    )
    source = contacts(source_url)
    [last] = store.read_batch(source, store.read_batch(source, None, 19)[-1].position, 1)
    upto = last.position  # row 20
    since = at(15 * 60)
    got = store.read_window(source, since, upto, None, 3)
    assert [r.key for r in got] == [15, 16, 17]
    more = store.read_window(source, since, upto, got[-1].position, 10)
    assert [r.key for r in more] == [18, 19, 20]
    assert store.latest_order_value(source) == last.order_value
