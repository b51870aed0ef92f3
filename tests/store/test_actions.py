"""Operator actions through SqlStore, on SQLite and PostgreSQL: skipping ExportErrors rows,
resetting a stream, the audit trail, and a run that acted on a state an operator changed."""

from __future__ import annotations

import json

import pytest

from crm_export.errors import StreamChangedError
from crm_export.ports import BatchAck, PausedRecord, Position, RunCounts
from crm_export.store import SqlStore
from crm_export.store.actions import StepOver
from tests.store.store_kit import T0, Clock, failure


def paused_stream(store: SqlStore) -> tuple[int, dict[str, int]]:
    """contacts paused at record 7 (position 6), with open errors for 3 and 7."""
    run = store.begin_run("CRMExport", "contacts")
    store.acknowledge(BatchAck("contacts", run, position=Position(3, 3), failures=[failure("3")]))
    store.acknowledge(
        BatchAck(
            "contacts",
            run,
            position=Position(6, 6),
            pause=PausedRecord("7", T0, "REQUIRED_FIELD_MISSING", "boom"),
            failures=[failure("7")],
        )
    )
    ids = {r["record_key"]: int(r["id"]) for r in store.list_errors()}
    return run, ids


def test_skip_closes_open_rows_saying_who_and_why_and_audits(
    timed_store: SqlStore, clock: Clock
) -> None:
    store = timed_store
    _, ids = paused_stream(store)
    when = clock.tick()
    result = store.skip_errors([ids["3"], 999], actor="ops", reason="bad legacy row")
    assert [r["id"] for r in result.skipped] == [ids["3"]] and result.missing == [999]
    [row] = store.errors_by_ids([ids["3"]])
    assert (row["status"], row["closed_by"], row["close_reason"]) == (
        "skipped",
        "ops",
        "bad legacy row",
    )
    assert row["resolved_at"] == when
    # Not the paused record: the pause holds.
    assert store.load_state("contacts").paused is not None
    # Skipped rows are no longer open: the re-export never sees them.
    assert [e.record_key for e in store.open_errors("contacts")] == ["7"]
    # Again: nothing to do, and said so.
    again = store.skip_errors([ids["3"]], actor="ops", reason=None)
    assert again.skipped == [] and [r["id"] for r in again.not_open] == [ids["3"]]
    first, second = store.list_actions()[::-1]
    assert (first["action"], first["actor"], first["stream"]) == ("errors_skip", "ops", "contacts")
    assert (first["error_ids"], first["reason"], first["at"]) == (
        str(ids["3"]),
        "bad legacy row",
        when,
    )
    assert json.loads(first["detail"])["missing"] == [999]
    assert second["error_ids"] is None


def test_skipping_the_paused_record_releases_the_pause_and_steps_over_it(
    store: SqlStore,
) -> None:
    _, ids = paused_stream(store)
    step = StepOver("7", Position(6, 6), Position(7, 7))
    result = store.skip_errors([ids["7"]], actor="ops", reason=None, step_over={"contacts": step})
    assert result.released == {"contacts": {"record_key": "7", "stepped_over": True}}
    state = store.load_state("contacts")
    assert state.paused is None and state.position == Position(7, 7)


def test_a_step_over_computed_on_a_stale_position_leaves_the_position_alone(
    store: SqlStore,
) -> None:
    _, ids = paused_stream(store)
    stale = StepOver("7", Position(5, 5), Position(7, 7))
    result = store.skip_errors([ids["7"]], actor="ops", reason=None, step_over={"contacts": stale})
    assert result.released["contacts"]["stepped_over"] is False
    state = store.load_state("contacts")
    assert state.paused is None and state.position == Position(6, 6)


def test_reset_clears_position_and_pause_and_keeps_open_errors(store: SqlStore) -> None:
    paused_stream(store)
    before = store.reset_stream("contacts", actor="ops", reason="re-export after a fix")
    assert before["position"] == {"order_by": 6, "key": 6}
    assert before["paused_record_key"] == "7"
    state = store.load_state("contacts")
    assert state.position is None and state.paused is None and state.source_snapshot is None
    assert {e.record_key for e in store.open_errors("contacts")} == {"3", "7"}
    [action] = store.list_actions()
    assert action["action"] == "stream_reset" and action["reason"] == "re-export after a fix"
    assert json.loads(action["detail"])["before"]["paused_record_key"] == "7"


@pytest.mark.parametrize("action", ["skip", "reset"])
def test_a_run_cannot_overwrite_what_an_operator_changed_meanwhile(
    state_url: str, action: str
) -> None:
    # The daemon's store and the CLI's store: two processes' worth of engines.
    with SqlStore(state_url) as daemon, SqlStore(state_url) as cli:
        run, ids = paused_stream(daemon)
        daemon.load_state("contacts")  # a run begins: it reads the state...
        if action == "skip":
            cli.skip_errors([ids["7"]], actor="ops", reason=None)
        else:
            cli.reset_stream("contacts", actor="ops", reason=None)
        after = cli.load_state("contacts")
        errors = cli.list_errors(include_resolved=True)
        # ... and acknowledges a batch decided on the old state: refused, nothing changes.
        stale = BatchAck(
            "contacts",
            run,
            position=Position(9, 9),
            pause=PausedRecord("7", T0, "X", "again"),
            failures=[failure("7")],
            counts=RunCounts(read=1, paused=1),
        )
        with pytest.raises(StreamChangedError, match="changed by an operator"):
            daemon.acknowledge(stale)
        assert daemon.load_state("contacts") == after
        assert cli.list_errors(include_resolved=True) == errors  # no row opened or bumped
        run_row = daemon.get_run(run)
        assert run_row is not None and run_row["records_failed"] == 0
        # The next run reads the new state and goes on.
        daemon.acknowledge(BatchAck("contacts", run, position=Position(9, 9)))
        assert daemon.load_state("contacts").position == Position(9, 9)
        # Another stream is not affected by an action on this one.
        daemon.load_state("accounts")
        cli.reset_stream("contacts", actor="ops", reason=None)
        daemon.acknowledge(BatchAck("accounts", run, position=Position(1, 1)))
