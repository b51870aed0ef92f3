"""What the daemon's metrics read from the state database on a scrape (issue 12 §2):
paused streams, open ExportErrors by stream and code, each job's last completed run."""

from __future__ import annotations

from datetime import timedelta

from crm_export.ports import BatchAck, JobId, PausedRecord, RunOutcome
from crm_export.store import SqlStore
from tests.store.store_kit import T0, Clock, failure


def test_the_monitoring_snapshot(timed_store: SqlStore, clock: Clock) -> None:
    store = timed_store
    assert store.monitoring_snapshot().paused_since == {}

    first = store.begin_run(JobId.EXPORT, "contacts")
    store.finish_run(first, RunOutcome.COMPLETED)
    done_at = clock.now
    clock.now += timedelta(minutes=5)
    paused = store.begin_run(JobId.EXPORT, "contacts")
    since = T0 - timedelta(hours=2)
    store.acknowledge(
        BatchAck(
            "contacts",
            paused,
            pause=PausedRecord("7", since, "INVALID_EMAIL_ADDRESS", "bad"),
            failures=[failure("7", "INVALID_EMAIL_ADDRESS"), failure("8", "INVALID_EMAIL_ADDRESS")],
        )
    )
    store.finish_run(paused, RunOutcome.PAUSED)
    other = store.begin_run(JobId.EXPORT, "deals")
    store.acknowledge(BatchAck("deals", other, failures=[failure("d1", "REQUIRED_FIELD_MISSING")]))
    store.finish_run(other, RunOutcome.FAILED, "boom")
    reexport = store.begin_run(JobId.REEXPORT, "deals")
    store.finish_run(reexport, RunOutcome.COMPLETED)
    # A resolved error is not open any more.
    fix = store.begin_run(JobId.REEXPORT, "contacts")
    store.acknowledge(BatchAck("contacts", fix, resolved_keys=["8"]))

    snapshot = store.monitoring_snapshot()
    assert snapshot.paused_since == {"contacts": since}
    assert snapshot.open_errors == {
        ("contacts", "INVALID_EMAIL_ADDRESS"): 1,
        ("deals", "REQUIRED_FIELD_MISSING"): 1,
    }
    # Paused and failed runs are not successes; the running one has not finished.
    assert snapshot.last_completed == {
        ("CRMExport", "contacts"): done_at,
        ("CRMExport_ExportError", "deals"): clock.now,
    }
