"""Stopping `crm-export run` in the middle of an export, then starting it again.

The sandbox org answers slowly (its latency fault), so a SIGTERM sent once the org holds the
first records lands while the run is still going. The first signal lets the batch in flight
be acknowledged and exits 0; a second one exits at once. Either way the restarted daemon
finishes the export with every record in the org exactly once and ExportErrors holding
exactly the rejected records.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from crm_export.sandbox.admin_client import AdminClient
from tests.daemon.daemon_kit import (
    DaemonProcess,
    external_ids,
    poll,
    runs,
    write_daemon_config,
)
from tests.harness import (
    ContactSet,
    SandboxProcess,
    Stream,
    contact_rows,
    sql,
    sqlite_url,
    write_contacts,
)

CONTACTS = contact_rows(range(1, 401), reject_every=40)  # ten rejects, every code


def setup(tmp_path: Path, sandbox: SandboxProcess) -> tuple[Path, str]:
    source = tmp_path / "source.db"
    write_contacts(source, CONTACTS.rows)
    state_url = sqlite_url(tmp_path / "state.db")
    config = write_daemon_config(
        tmp_path / "crm-export.toml",
        state_url=state_url,
        org=sandbox.org,
        streams=[Stream("contacts", sqlite_url(source))],
        pause_on_error=False,
        batch_size=20,
        interval=2,
    )
    return config, state_url


def finish_after_restart(
    tmp_path: Path, config: Path, state_url: str, admin: AdminClient, name: str
) -> DaemonProcess:
    admin.clear_faults()
    with DaemonProcess(config, tmp_path / f"{name}.log") as daemon:
        poll(
            lambda: any(r["outcome"] == "completed" for r in runs(state_url, "CRMExport")),
            "a completed export after the restart",
            context=daemon.tail,
        )
        assert daemon.stop() == 0
    return daemon


def assert_exported_exactly_once(state_url: str, admin: AdminClient, contacts: ContactSet) -> None:
    in_org = external_ids(admin)
    assert set(in_org) == contacts.accepted, "lost or extra records"
    assert max(in_org.values()) == 1, "a duplicate External_Id__c"
    counted = admin.counters()["records"]
    # Every accepted record was created once and never sent again after its acknowledgement.
    assert counted["created"] == len(contacts.accepted)
    errors = sql(
        state_url, "SELECT record_key, error_code, attempts, resolved_at FROM ExportErrors"
    )
    assert {e["record_key"]: e["error_code"] for e in errors} == contacts.rejected
    assert all(e["attempts"] == 1 and e["resolved_at"] is None for e in errors), errors


def test_sigterm_mid_export_exits_0_and_a_restart_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    with SandboxProcess(tmp_path, faults={"latency_ms": 150}) as sandbox:
        config, state_url = setup(tmp_path, sandbox)
        with DaemonProcess(config, tmp_path / "first.log") as daemon:
            poll(lambda: len(external_ids(sandbox.admin)) >= 40, "the first batches in the org")
            signalled = time.monotonic()
            code = daemon.stop()
            took = time.monotonic() - signalled
        assert code == 0, daemon.tail()
        assert took < 30, took
        assert daemon.events("stopping")[0]["signal"] == "SIGTERM"
        assert daemon.events("daemon_stopped")[-1]["exit_code"] == 0
        assert daemon.plain_lines() == []

        # The run says it was stopped, and counts exactly what reached the org.
        (run,) = runs(state_url, "CRMExport")
        assert run["outcome"] == "interrupted"
        assert run["finished_at"] is not None
        assert "stopped on request" in run["error"]
        in_org = external_ids(sandbox.admin)
        assert 40 <= len(in_org) < len(CONTACTS.accepted), "the signal did not land mid-run"
        assert run["records_exported"] == len(in_org)
        assert run["records_exported"] + run["records_failed"] == run["records_read"]
        finished = daemon.events("run_finished", outcome="interrupted")
        assert finished and finished[0]["exported"] == len(in_org)

        restarted = finish_after_restart(tmp_path, config, state_url, sandbox.admin, "second")
        assert_exported_exactly_once(state_url, sandbox.admin, CONTACTS)
        assert [r["outcome"] for r in runs(state_url, "CRMExport")][:2] == [
            "interrupted",
            "completed",
        ]
        assert not restarted.events("job_crashed")


def test_a_second_signal_exits_at_once_and_a_restart_still_loses_nothing(
    tmp_path: Path,
) -> None:
    # Each upsert call takes 4 s, so a graceful stop would wait seconds for the batches in
    # flight. The org counts a call when it arrives, then waits. Skip mode has four calls in
    # flight (the default max_in_flight): the fifth arrives once the first is answered, ~4 s
    # in, and then has ~4 s to go. (Signalled between two calls instead, the daemon would
    # stop at once, and the second signal could meet an interpreter already shutting down.)
    slow_upserts = {"latency_ms": 4000, "paths": "/composite/"}
    with SandboxProcess(tmp_path, faults=slow_upserts) as sandbox:
        config, state_url = setup(tmp_path, sandbox)
        with DaemonProcess(config, tmp_path / "first.log") as daemon:
            poll(
                lambda: sandbox.admin.counters()["calls"].get("composite_upsert", 0) >= 5,
                "the fifth batch in flight",
            )
            daemon.signal(signal.SIGTERM)
            daemon.wait_for_event("stopping")
            signalled = time.monotonic()
            daemon.signal(signal.SIGTERM)
            code = daemon.wait()
            took = time.monotonic() - signalled
        assert code == 128 + signal.SIGTERM
        # Each 4 s batch outlived the 2 s interval: the ticks in between were skipped, and the
        # log says so in JSON like everything else.
        assert daemon.events("job_skipped", job="CRMExport"), daemon.tail()
        assert daemon.plain_lines() == []
        assert took < 3, f"the second signal took {took:.1f} s to end the daemon"
        assert daemon.events("second_signal")
        # Nobody finished the run: it stays 'running' until the next runner marks it.
        assert [r["outcome"] for r in runs(state_url, "CRMExport")] == ["running"]

        finish_after_restart(tmp_path, config, state_url, sandbox.admin, "second")
        assert_exported_exactly_once(state_url, sandbox.admin, CONTACTS)
        first, *_ = runs(state_url, "CRMExport")
        assert first["outcome"] == "interrupted"
        assert first["finished_at"] is not None
