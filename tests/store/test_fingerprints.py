"""What the state database keeps for issue 13, on SQLite and PostgreSQL: fingerprints (written
only by an acknowledgement, never for a record with an open error) and resync requests."""

from __future__ import annotations

from store_kit import failure

from crm_export.ports import BatchAck, Position
from crm_export.store import SqlStore

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
