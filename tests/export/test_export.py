"""CRMExport and CRMExport_ExportError end to end: SQLite source, real state database (SQLite
and PostgreSQL), the sandbox org over verified HTTPS, unmodified simple-salesforce."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from crm_export.ports import RunOutcome
from tests.export.export_scenario import Scenario

BAD_EMAIL = {"email": "not-an-email"}


def test_exports_every_row_and_a_rerun_never_duplicates(scenario: Scenario) -> None:
    scenario.add_many(range(1, 451))
    result = scenario.run()
    assert result.outcome is RunOutcome.COMPLETED
    assert (result.counts.read, result.counts.exported, result.counts.failed) == (450, 450, 0)
    contacts = scenario.contacts()
    assert len(contacts) == 450
    assert contacts["17"]["LastName"] == "Smith" and contacts["17"]["Email"] == "c17@acme.test"
    # Collections calls of at most 200 records: 200 + 200 + 50, plus one login.
    assert scenario.sandbox.counters()["calls"]["composite_upsert"] == 3

    again = scenario.run()
    assert again.outcome is RunOutcome.COMPLETED and again.counts.read == 0
    assert len(scenario.contacts()) == 450
    assert len(scenario.written()) == 450  # nothing was sent twice

    # A changed row goes again, as an update of the same record.
    scenario.update(17, last_name="Jones")
    changed = scenario.run()
    assert changed.counts.exported == 1
    assert len(scenario.contacts()) == 450
    assert scenario.contacts()["17"]["LastName"] == "Jones"
    [run] = scenario.sql(
        "SELECT outcome, records_read, records_exported, api_calls FROM export_runs "
        "ORDER BY id LIMIT 1"
    )
    assert run["outcome"] == "completed"
    assert (run["records_read"], run["records_exported"]) == (450, 450)
    assert run["api_calls"] >= 3


def test_pause_writes_nothing_after_the_failing_record(scenario: Scenario) -> None:
    scenario.add_many(range(1, 4))
    scenario.add(4, **BAD_EMAIL)
    scenario.add_many(range(5, 11))
    first = scenario.run()

    assert first.outcome is RunOutcome.PAUSED
    assert first.paused is not None and first.paused.record_key == "4"
    # The org's own write log: the batch was cut before record 4, and nothing after it went.
    assert scenario.written() == ["1", "2", "3"]
    assert scenario.open_errors() == {"4": ("INVALID_EMAIL_ADDRESS", 1)}

    # Every later run retries record 4 only, and counts the attempt on the same episode.
    second = scenario.run()
    assert second.outcome is RunOutcome.PAUSED
    assert scenario.written() == ["1", "2", "3"]
    assert scenario.open_errors() == {"4": ("INVALID_EMAIL_ADDRESS", 2)}
    assert len(scenario.export_errors()) == 1

    # The user fixes the row: the record goes first, then the ones behind it, in order.
    scenario.update(4, email="fixed@acme.test")
    third = scenario.run()
    assert third.outcome is RunOutcome.COMPLETED
    assert scenario.written() == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
    [episode] = scenario.export_errors()
    assert episode["resolved_at"] is not None and episode["status"] == "resolved"
    [state] = scenario.sql("SELECT paused_record_key FROM stream_state")
    assert state["paused_record_key"] is None


def test_skip_mode_logs_the_record_and_moves_on(scenario: Scenario) -> None:
    scenario.add_many(range(1, 4))
    scenario.add(4, title="DO NOT EXPORT")
    scenario.add(5, last_name="TriggerFail")
    scenario.add_many(range(6, 9))
    result = scenario.run(pause_on_error=False)
    assert result.outcome is RunOutcome.COMPLETED
    assert (result.counts.exported, result.counts.failed, result.counts.paused) == (6, 2, 0)
    assert sorted(scenario.contacts(), key=int) == ["1", "2", "3", "6", "7", "8"]
    assert scenario.open_errors() == {
        "4": ("FIELD_CUSTOM_VALIDATION_EXCEPTION", 1),
        "5": ("CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY", 1),
    }
    [row] = scenario.sql(
        "SELECT sobject, external_id, error_message, error_fields, payload, run_id "
        "FROM ExportErrors WHERE record_key = '4'"
    )
    assert row["sobject"] == "Contact" and row["external_id"] == "4"
    assert "DO NOT EXPORT" in row["error_message"]
    assert "Title" in row["error_fields"]
    assert '"Title": "DO NOT EXPORT"' in row["payload"]
    # Nothing new: the next run reads nothing and the errors stay as they were.
    assert scenario.run(pause_on_error=False).counts.read == 0
    assert scenario.open_errors()["4"] == ("FIELD_CUSTOM_VALIDATION_EXCEPTION", 1)


def test_toggling_pause_mode_between_runs(scenario: Scenario) -> None:
    scenario.add_many(range(1, 3))
    scenario.add(3, **BAD_EMAIL)
    scenario.add_many(range(4, 6))
    assert scenario.run(pause_on_error=True).outcome is RunOutcome.PAUSED
    assert scenario.written() == ["1", "2"]

    skipped = scenario.run(pause_on_error=False)
    assert skipped.outcome is RunOutcome.COMPLETED
    assert scenario.written() == ["1", "2", "4", "5"]
    assert scenario.open_errors() == {"3": ("INVALID_EMAIL_ADDRESS", 2)}

    # Back on: a new failure pauses again, and the earlier one stays logged.
    scenario.add(6, **BAD_EMAIL)
    scenario.add(7)
    assert scenario.run(pause_on_error=True).outcome is RunOutcome.PAUSED
    assert "7" not in scenario.written()
    assert set(scenario.open_errors()) == {"3", "6"}


def test_reexport_after_fixing_the_source_and_relaxing_the_org(scenario: Scenario) -> None:
    scenario.add(1, **BAD_EMAIL)
    scenario.add(2, email="someone@example.invalid")  # the org's validation rule
    scenario.add(3, last_name="TriggerFail")
    scenario.add(4, title="DO NOT EXPORT")
    scenario.add(5)
    scenario.run(pause_on_error=False)
    assert set(scenario.open_errors()) == {"1", "2", "3", "4"}

    scenario.update(1, email="one@acme.test")  # the user fixes the data
    scenario.sandbox.set_org(  # an admin relaxes a rule in the org
        patch={
            "objects": {
                "Contact": {"validation_rules": {"Email_Not_Example_Invalid": {"active": False}}}
            }
        }
    )
    scenario.delete(3)  # the row is gone from the source
    result = scenario.run("CRMExport_ExportError", pause_on_error=False)

    assert result.job_id == "CRMExport_ExportError"
    assert result.outcome is RunOutcome.COMPLETED
    rows = {e["record_key"]: e for e in scenario.export_errors()}
    assert rows["1"]["status"] == "resolved" and rows["1"]["resolved_at"] is not None
    assert rows["2"]["status"] == "resolved"
    assert rows["3"]["status"] == "source_deleted" and rows["3"]["resolved_at"] is not None
    assert (rows["4"]["status"], rows["4"]["attempts"]) == ("open", 2)
    contacts = scenario.contacts()
    assert contacts["1"]["Email"] == "one@acme.test"
    assert contacts["2"]["Email"] == "someone@example.invalid"
    assert "3" not in contacts
    [run] = scenario.sql(
        "SELECT job_id, outcome, records_exported, records_failed FROM export_runs "
        "WHERE job_id = 'CRMExport_ExportError'"
    )
    assert (run["outcome"], run["records_exported"], run["records_failed"]) == ("completed", 2, 1)


def test_reexport_of_the_paused_record_releases_the_pause(scenario: Scenario) -> None:
    scenario.add(1)
    scenario.add(2, **BAD_EMAIL)
    scenario.add(3)
    assert scenario.run().outcome is RunOutcome.PAUSED
    scenario.update(2, email="two@acme.test")
    scenario.run("CRMExport_ExportError")
    [state] = scenario.sql("SELECT paused_record_key FROM stream_state")
    assert state["paused_record_key"] is None
    assert scenario.open_errors() == {}
    assert scenario.run().outcome is RunOutcome.COMPLETED
    assert sorted(scenario.contacts()) == ["1", "2", "3"]


def test_row_locks_are_retried_and_never_become_export_errors(scenario: Scenario) -> None:
    scenario.add_many(range(1, 201))
    scenario.sandbox.set_faults(lock_row_rate=0.05)
    for pause in (True, False):
        result = scenario.run(pause_on_error=pause)
        assert result.outcome is RunOutcome.COMPLETED, result.error
        scenario.add_many(range(1000 if pause else 2000, (1000 if pause else 2000) + 100))
    assert scenario.sandbox.counters()["faults"].get("lock_row", 0) > 0
    assert scenario.export_errors() == []


def test_a_lock_that_outlasts_its_budget_is_logged_with_its_code(scenario: Scenario) -> None:
    scenario.add_many(range(1, 6))
    scenario.sandbox.set_faults(lock_row_rate=1.0)
    result = scenario.run(pause_on_error=False, record_retry_attempts=2)
    assert result.outcome is RunOutcome.COMPLETED
    assert {code for code, _ in scenario.open_errors().values()} == {"UNABLE_TO_LOCK_ROW"}
    scenario.sandbox.clear_faults()
    scenario.run("CRMExport_ExportError", pause_on_error=False)
    assert scenario.open_errors() == {}
    assert len(scenario.contacts()) == 5


def test_a_hostile_fault_mix_loses_nothing_and_logs_no_record(scenario: Scenario) -> None:
    scenario.add_many(range(1, 601))
    scenario.sandbox.set_faults(
        http_error_rate={"500": 0.03, "502": 0.03, "503": 0.1},
        reset_rate=0.05,
        lock_row_rate=0.02,
        token_ttl_calls=4,
        request_limit_rate=0.05,
    )
    retry = {
        "max_attempts": 30,
        "max_elapsed_seconds": 30,
        "initial_backoff_seconds": 0.005,
        "max_backoff_seconds": 0.02,
    }
    result = scenario.run(batch_size=50, retry=retry, record_retry_attempts=20)
    assert result.outcome is RunOutcome.COMPLETED, result.error
    counters = scenario.sandbox.counters()
    assert sum(counters["faults"].values()) > 10  # the mix really happened
    assert len(scenario.contacts()) == 600
    assert scenario.export_errors() == []
    written = scenario.written()
    assert set(written) == {str(i) for i in range(1, 601)}


def test_an_outage_past_the_retry_budget_fails_the_run_and_the_next_resumes(
    scenario: Scenario,
) -> None:
    scenario.add_many(range(1, 101))
    assert scenario.run().outcome is RunOutcome.COMPLETED
    scenario.add_many(range(101, 201))
    scenario.sandbox.set_faults(outage_seconds=30)
    failed = scenario.run(
        retry={
            "max_attempts": 3,
            "max_elapsed_seconds": 1,
            "initial_backoff_seconds": 0.01,
            "max_backoff_seconds": 0.02,
        }
    )
    assert failed.outcome is RunOutcome.FAILED
    assert "503" in (failed.error or "") or "gave up" in (failed.error or "")
    assert scenario.export_errors() == []
    [run] = scenario.sql("SELECT outcome, error FROM export_runs ORDER BY id DESC LIMIT 1")
    assert run["outcome"] == "failed" and run["error"]
    assert len(scenario.contacts()) == 100

    scenario.sandbox.clear_faults()
    resumed = scenario.run()
    assert resumed.outcome is RunOutcome.COMPLETED
    assert resumed.counts.exported == 100
    assert len(scenario.contacts()) == 200


def test_an_unknown_field_stops_the_run_without_flooding_export_errors(
    scenario: Scenario,
) -> None:
    scenario.add_many(range(1, 301))
    fields = {"LastName": "last_name", "Shoe_Size__c": "first_name"}
    result = scenario.run(pause_on_error=False, fields=fields)
    assert result.outcome is RunOutcome.FAILED
    assert "Shoe_Size__c" in (result.error or "")
    assert scenario.export_errors() == []
    assert scenario.contacts() == {}
    [state] = scenario.sql("SELECT position_key FROM stream_state") or [{"position_key": None}]
    assert state["position_key"] is None


def test_a_read_only_field_floods_no_more_than_the_configured_streak(scenario: Scenario) -> None:
    scenario.add_many(range(1, 101))
    fields = {"LastName": "last_name", "Lifetime_Value__c": "id"}
    result = scenario.run(
        pause_on_error=False, fields=fields, batch_size=10, max_identical_errors=15
    )
    assert result.outcome is RunOutcome.FAILED
    assert "configuration problem" in (result.error or "")
    assert len(scenario.export_errors()) == 20  # two batches, then the stop


def test_a_wrong_client_secret_fails_with_a_message_and_no_errors(scenario: Scenario) -> None:
    scenario.add_many(range(1, 5))
    result = scenario.run(client_secret="not-the-secret")
    assert result.outcome is RunOutcome.FAILED
    assert "invalid_client" in (result.error or "")
    assert "not-the-secret" not in (result.error or "")
    assert scenario.export_errors() == []


def test_a_401_that_survives_reauthentication_is_bounded(scenario: Scenario) -> None:
    scenario.add_many(range(1, 5))
    scenario.sandbox.set_faults(token_ttl_seconds=0.000001)
    result = scenario.run()
    assert result.outcome is RunOutcome.FAILED
    assert "INVALID_SESSION_ID" in (result.error or "")
    # A bounded number of logins, not simple-salesforce's unbounded loop (#804).
    assert scenario.sandbox.counters()["calls"]["token"] <= 3 * 6
    assert scenario.export_errors() == []


def test_every_call_has_a_timeout(scenario: Scenario) -> None:
    scenario.add_many(range(1, 3))
    scenario.sandbox.set_faults(latency_ms=1500)
    result = scenario.run(
        timeout_seconds=0.3,
        retry={
            "max_attempts": 2,
            "max_elapsed_seconds": 1,
            "initial_backoff_seconds": 0.01,
            "max_backoff_seconds": 0.02,
        },
    )
    assert result.outcome is RunOutcome.FAILED
    assert "Timeout" in (result.error or "") or "timed out" in (result.error or "")
    assert scenario.export_errors() == []


def test_sparse_rejections_in_skip_mode_never_stop_the_run(scenario: Scenario) -> None:
    """1% of the rows miss a required field, spread evenly: the most common shape of real
    data. The default max_identical_errors (50) counts records in a row, so the run ends."""
    rows = [
        {
            "id": key,
            "first_name": f"F{key}",
            "email": f"c{key}@acme.test",
            "title": None,
            "last_name": None if key % 100 == 0 else f"Last{key}",
            "at": f"2026-01-01 {key:08d}",
        }
        for key in range(1, 10_001)
    ]
    with sqlite3.connect(scenario.source) as db:
        db.executemany(
            "INSERT INTO contacts (id, first_name, last_name, email, title, updated_at) "
            "VALUES (:id, :first_name, :last_name, :email, :title, :at)",
            rows,
        )
    config = scenario.config(pause_on_error=False)
    done = subprocess.run(
        [sys.executable, "-m", "crm_export", "job", "CRMExport", "--config", str(config.path)],
        env={**os.environ, "SF_CLIENT_SECRET": scenario.sandbox.client_secret},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(scenario.contacts()) == 9_900
    errors = scenario.open_errors()
    assert len(errors) == 100
    assert {code for code, _ in errors.values()} == {"REQUIRED_FIELD_MISSING"}
