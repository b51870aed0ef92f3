"""Bulk API 2.0 for large backlogs, end to end: over HTTPS against the sandbox org, with the
org's own call counters and job list, on SQLite and PostgreSQL state."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crm_export.ports import RunOutcome
from tests.export.export_scenario import T0, Scenario

# Fast polling for tests; jobs of 1,000 rows; a backlog of more than 100 rows goes by Bulk.
# batch_size 50: a tail of up to 300 rows (six Collections calls) goes by Collections.
BULK = (
    "bulk_threshold = 100\n"
    "bulk_max_records = 1000\n"
    "bulk_poll_initial_seconds = 0.02\n"
    "bulk_poll_max_seconds = 0.1\n"
)


def bulk(scenario: Scenario, extra: str = "") -> None:
    scenario.settings.update(pause_on_error=False, batch_size=50, export_lines=BULK + extra)


def calls(scenario: Scenario) -> dict[str, int]:
    return {k: int(v) for k, v in scenario.sandbox.counters()["calls"].items()}


def charged(counted: dict[str, int]) -> int:
    """What the org charges: every data call (not the token, not the versions list)."""
    return sum(v for k, v in counted.items() if k not in {"token", "versions"})


def test_a_backlog_above_the_threshold_goes_by_bulk_in_few_calls(scenario: Scenario) -> None:
    bulk(scenario)
    scenario.add_many(range(1, 2201))
    result = scenario.run()

    assert result.outcome is RunOutcome.COMPLETED
    assert (result.counts.read, result.counts.exported) == (2200, 2200)
    assert len(scenario.contacts()) == 2200
    counted = calls(scenario)
    # Two clean jobs of 1,000: create, upload, close and the polls, nothing else. The final
    # poll says every record was processed and none failed, so no result file is fetched:
    # each row's outcome is known from what was sent. The tail of 200 goes in four
    # Collections calls of 50, and one describe.
    assert counted["bulk_create"] == 2 and counted["bulk_upload"] == 2
    assert counted["bulk_state"] == 2
    assert "bulk_results" not in counted
    assert 2 <= counted["bulk_get"] <= 4  # a 1,000-row job is done by its first poll or so
    assert counted["composite_upsert"] == 4
    assert counted["describe"] == 1
    assert charged(counted) == 2 * 3 + counted["bulk_get"] + 4 + 1
    # Every Bulk call is in the run's API calls, as the org counted them.
    assert result.counts.api_calls == charged(counted)
    [run] = scenario.sql("SELECT api_calls, records_exported FROM export_runs")
    assert run == {"api_calls": charged(counted), "records_exported": 2200}
    assert [j["status"] for j in scenario.sql("SELECT status FROM bulk_jobs")] == ["done"] * 2
    # The position is past every row: the next run reads nothing and spends nothing.
    again = scenario.run()
    assert (again.counts.read, again.counts.api_calls) == (0, 0)


def test_pause_mode_and_small_backlogs_never_use_bulk(scenario: Scenario) -> None:
    bulk(scenario)
    scenario.add_many(range(1, 501))
    assert scenario.run(pause_on_error=True).counts.exported == 500
    scenario.add_many(range(501, 581))  # 80 rows pending: below the threshold
    assert scenario.run().counts.exported == 80
    assert "bulk_create" not in calls(scenario)
    assert len(scenario.contacts()) == 580


def test_unchanged_rows_are_not_sent_by_bulk_either(scenario: Scenario) -> None:
    bulk(scenario)
    scenario.add_many(range(1, 1201))
    assert scenario.run().counts.exported == 1200
    before = calls(scenario)
    scenario.touch_all()
    scenario.update(7, last_name="Jones")
    again = scenario.run()
    assert (again.counts.read, again.counts.unchanged, again.counts.exported) == (1200, 1199, 1)
    after = calls(scenario)
    # The first 1,000 rows read by the Bulk path are all unchanged: no job, no call. Row 7,
    # touched last, is in the tail, one Collections call.
    assert after["bulk_create"] == before["bulk_create"] == 1
    assert after["composite_upsert"] - before["composite_upsert"] == 1
    assert again.counts.api_calls == 2  # and the describe
    assert scenario.contacts()["7"]["LastName"] == "Jones"

    # A changed row in the Bulk range goes in a job of one.
    scenario.update(1, last_name="Brown")
    scenario.touch_all()  # row 1 first in the order again
    third = scenario.run()
    assert (third.counts.unchanged, third.counts.exported) == (1199, 1)
    assert calls(scenario)["bulk_create"] == 2
    [job] = [j for j in scenario.sandbox.jobs() if j["numberRecordsProcessed"] == 1]
    assert job["state"] == "JobComplete"
    assert scenario.contacts()["1"]["LastName"] == "Brown"


def test_record_errors_land_in_export_errors_with_code_and_message(scenario: Scenario) -> None:
    bulk(scenario)
    scenario.add_many(range(1, 401))
    scenario.add(401, title="DO NOT EXPORT")
    scenario.add(402, email="x@example.invalid")
    scenario.add_many(range(403, 801))
    result = scenario.run()

    assert result.outcome is RunOutcome.COMPLETED
    assert (result.counts.exported, result.counts.failed) == (798, 2)
    counted = calls(scenario)
    assert counted["bulk_create"] == 1
    # Failures: successfulResults and failedResults are fetched; every record was
    # processed, so unprocessedrecords is not.
    assert counted["bulk_results"] == 2
    assert result.counts.api_calls == charged(counted)
    [run] = scenario.sql("SELECT api_calls, records_failed FROM export_runs")
    assert run == {"api_calls": charged(counted), "records_failed": 2}
    assert scenario.open_errors() == {
        "401": ("FIELD_CUSTOM_VALIDATION_EXCEPTION", 1),
        "402": ("FIELD_CUSTOM_VALIDATION_EXCEPTION", 1),
    }
    [row] = scenario.sql(
        "SELECT sobject, external_id, error_message, error_fields, payload FROM ExportErrors "
        "WHERE record_key = '401'"
    )
    # Split as Collections splits it: the code alone, the message without the fields.
    assert row["error_message"] == "This contact is marked DO NOT EXPORT."
    assert (row["sobject"], row["external_id"]) == ("Contact", "401")
    assert "Title" in row["error_fields"]
    assert '"Title": "DO NOT EXPORT"' in row["payload"]
    # The re-export fixes them by Collections once the rows are fixed.
    scenario.update(401, title="CEO")
    scenario.update(402, email="c402@acme.test")
    fixed = scenario.run("CRMExport_ExportError")
    assert fixed.counts.exported == 2 and scenario.open_errors() == {}


def test_a_locked_row_in_a_bulk_job_is_sent_again_by_collections(scenario: Scenario) -> None:
    bulk(scenario)
    scenario.add_many(range(1, 601))
    # Every record locked once in the Bulk job, and no lock after that.
    scenario.sandbox.set_faults(lock_row_rate=1.0, paths="/jobs/ingest")
    result = scenario.run()
    assert result.outcome is RunOutcome.COMPLETED
    assert (result.counts.exported, result.counts.failed) == (600, 0)
    assert calls(scenario)["composite_upsert"] == 12  # the 600 again, 50 a call
    assert scenario.open_errors() == {}
    assert len(scenario.contacts()) == 600


def test_null_clears_the_field_on_both_paths(scenario: Scenario) -> None:
    bulk(scenario)
    # Collections: a small backlog.
    scenario.add(1000, title="CTO")
    scenario.run()
    assert scenario.contacts()["1000"]["Title"] == "CTO"
    scenario.update(1000, title=None)
    assert scenario.run().counts.exported == 1
    assert scenario.contacts()["1000"]["Title"] is None

    # Bulk: the same NULL, the same result.
    scenario.add_many(range(1, 401), title="CEO")
    assert scenario.run().counts.exported == 400
    assert calls(scenario)["bulk_create"] == 1
    assert {scenario.contacts()[str(k)]["Title"] for k in range(1, 401)} == {"CEO"}
    with sqlite3.connect(scenario.source) as db:
        db.execute("UPDATE contacts SET title = NULL, updated_at = '2027-01-01' WHERE id <= 400")
    db.close()
    cleared = scenario.run()
    assert cleared.counts.exported == 400 and calls(scenario)["bulk_create"] == 2
    assert {c["Title"] for c in scenario.contacts().values()} == {None}


def test_lookups_by_external_id_work_in_bulk_csv(scenario: Scenario) -> None:
    bulk(scenario)
    [account_id] = scenario.sandbox.insert_records(
        "Account", [{"Name": "Acme", "External_Id__c": "A-1"}]
    )
    with sqlite3.connect(scenario.source) as db:
        db.execute("ALTER TABLE contacts ADD COLUMN account_id TEXT")
    db.close()
    scenario.settings["stream_lines"] = (
        "[streams.lookups]\n"
        'AccountId = { sobject = "Account", external_id_field = "External_Id__c", '
        'column = "account_id" }\n'
    )
    scenario.add_many(range(1, 401))
    with sqlite3.connect(scenario.source) as db:
        db.execute("UPDATE contacts SET account_id = 'A-1' WHERE id <= 300")
        db.execute("UPDATE contacts SET account_id = 'A-9' WHERE id = 301")
    db.close()
    result = scenario.run()
    assert (result.counts.exported, result.counts.failed) == (399, 1)
    contacts = scenario.contacts()
    assert contacts["1"]["AccountId"] == account_id
    assert contacts["302"]["AccountId"] is None
    assert scenario.open_errors() == {"301": ("INVALID_FIELD", 1)}
    # NULL clears the lookup in Bulk too.
    with sqlite3.connect(scenario.source) as db:
        db.execute("UPDATE contacts SET account_id = NULL, updated_at = '2027-01-01'")
    db.close()
    cleared = scenario.run()
    # Rows 302-400 had no account already: unchanged. Row 301 goes through now.
    assert (cleared.counts.exported, cleared.counts.unchanged) == (301, 99)
    assert {c["AccountId"] for c in scenario.contacts().values()} == {None}
    assert scenario.open_errors() == {}
    assert calls(scenario)["bulk_create"] == 2


def _jobs(scenario: Scenario) -> list[dict[str, Any]]:
    return scenario.sandbox.jobs()


def test_a_restarted_run_resumes_the_job_instead_of_sending_again(scenario: Scenario) -> None:
    # The first run gives up polling (the job takes longer than its timeout): a transient
    # failure, no record error, the job stays recorded.
    bulk(scenario, "bulk_poll_timeout_seconds = 0.1\n")
    scenario.add_many(range(1, 801))
    scenario.sandbox.set_faults(bulk_job_seconds=1.0)
    first = scenario.run()
    assert first.outcome is RunOutcome.FAILED
    assert first.error is not None and "still" in first.error and "polling" in first.error
    assert first.counts.exported == 0 and scenario.open_errors() == {}
    [recorded] = scenario.sql("SELECT job_id, status, records FROM bulk_jobs")
    assert recorded["status"] == "open" and recorded["records"] == 800
    # `crm-export status` shows it.
    status = subprocess.run(
        [sys.executable, "-m", "crm_export", "status", "--config", str(scenario.config().path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SF_CLIENT_SECRET": scenario.sandbox.client_secret},
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert f"contacts: Bulk API 2.0 job {recorded['job_id']} (800 records) in flight" in (
        status.stdout
    )
    time.sleep(1.1)

    second = scenario.run()
    assert second.outcome is RunOutcome.COMPLETED
    assert second.counts.exported == 800
    # One job in the org, uploaded once; every record written once.
    assert [j["id"] for j in _jobs(scenario)] == [recorded["job_id"]]
    assert calls(scenario)["bulk_upload"] == 1
    assert sorted(scenario.written(), key=int) == [str(k) for k in range(1, 801)]
    assert scenario.sql("SELECT status FROM bulk_jobs") == [{"status": "done"}]
    assert scenario.run().counts.read == 0


def test_a_failed_job_fails_the_run_with_salesforces_message(scenario: Scenario) -> None:
    bulk(scenario, "bulk_poll_timeout_seconds = 0.1\n")
    scenario.add_many(range(1, 801), title="CEO")
    scenario.sandbox.set_faults(bulk_job_seconds=1.0)
    org = scenario.sandbox.org()
    assert scenario.run().outcome is RunOutcome.FAILED  # still processing: resumed later
    # The admin deletes Contact.Title while the job waits to be processed.
    scenario.sandbox.set_org(
        patch={
            "objects": {
                "Contact": {
                    "fields": {"Title": None},
                    "validation_rules": {"Title_Not_Do_Not_Export": None},
                }
            }
        }
    )
    time.sleep(1.1)
    failed = scenario.run()
    assert failed.outcome is RunOutcome.FAILED
    assert failed.error is not None
    assert "Failed: InvalidBatch : Field name not found : Title" in failed.error
    assert scenario.open_errors() == {}  # a job failure is not a record failure
    [job] = scenario.sql("SELECT status, error FROM bulk_jobs")
    assert job["status"] == "failed" and "Field name not found" in job["error"]

    # Fixed: the rows go again, in a new job, and nothing is duplicated.
    scenario.sandbox.set_org(org)
    scenario.sandbox.set_faults(bulk_job_seconds=0)
    fixed = scenario.run()
    assert fixed.outcome is RunOutcome.COMPLETED and fixed.counts.exported == 800
    assert len(scenario.contacts()) == 800
    assert len(_jobs(scenario)) == 2 and scenario.open_errors() == {}


def test_a_job_left_open_by_a_crash_is_aborted_and_its_rows_go_again(
    scenario: Scenario,
) -> None:
    """A runner killed after recording a job but before closing its upload: Salesforce never
    processes an Open job, so the next run aborts it and sends the rows in a new one."""
    bulk(scenario)
    scenario.add_many(range(1, 801))
    session = scenario.sandbox.requests_session()
    base = f"{scenario.sandbox.base_url}/services/data/v64.0/jobs/ingest"
    headers = {"Authorization": f"Bearer {scenario.sandbox.access_token()}"}
    job = session.post(
        base,
        json={"object": "Contact", "operation": "upsert", "externalIdFieldName": "External_Id__c"},
        headers=headers,
    ).json()
    _record_job(scenario, job["id"], 800)

    result = scenario.run()
    assert result.outcome is RunOutcome.COMPLETED and result.counts.exported == 800
    states = {j["id"]: j["state"] for j in _jobs(scenario)}
    assert states.pop(job["id"]) == "Aborted"
    assert list(states.values()) == ["JobComplete"]
    assert sorted(scenario.written(), key=int) == [str(k) for k in range(1, 801)]
    [abandoned] = scenario.sql(f"SELECT status, error FROM bulk_jobs WHERE job_id = '{job['id']}'")
    assert abandoned["status"] == "failed" and "Open" in abandoned["error"]


def test_a_job_whose_every_record_fails_alike_stops_the_run_as_configuration(
    scenario: Scenario,
) -> None:
    """The flood rule holds per job: 400 records refused alike, none accepted, is a rule or
    a mapping that rejects everything, not 400 ExportErrors rows."""
    bulk(scenario)
    scenario.add_many(range(1, 401), title="DO NOT EXPORT")
    result = scenario.run()
    assert result.outcome is RunOutcome.FAILED
    assert result.error is not None and "FIELD_CUSTOM_VALIDATION_EXCEPTION" in result.error
    assert scenario.open_errors() == {}
    [job] = scenario.sql("SELECT status FROM bulk_jobs")
    assert job["status"] == "failed"  # its rows go again once the cause is fixed
    scenario.sandbox.set_org(
        patch={"objects": {"Contact": {"validation_rules": {"Title_Not_Do_Not_Export": None}}}}
    )
    fixed = scenario.run()
    assert fixed.outcome is RunOutcome.COMPLETED and fixed.counts.exported == 400


def _record_job(scenario: Scenario, job_id: str, rows: int) -> None:
    """What a runner killed right after recording a job of the first ``rows`` rows left."""
    tagged = '{{"type": "str", "value": "{}"}}'
    first, last = tagged.format(order_value(1)), tagged.format(order_value(rows))
    engine = sa.create_engine(scenario.state_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO bulk_jobs (job_id, stream, first_order, first_key, last_order, "
                "last_key, records, status, created_at) VALUES (:id, 'contacts', :f, :fk, :l, "
                ":lk, :n, 'open', :at)"
            ),
            {
                "id": job_id,
                "f": first,
                "fk": '{"type": "int", "value": 1}',
                "l": last,
                "lk": f'{{"type": "int", "value": {rows}}}',
                "n": rows,
                "at": datetime.now(UTC),
            },
        )
    engine.dispose()


def order_value(tick: int) -> str:
    return (T0 + timedelta(seconds=tick)).strftime("%Y-%m-%d %H:%M:%S")


def test_a_recorded_job_salesforce_no_longer_knows_is_given_up(scenario: Scenario) -> None:
    """Salesforce deletes jobs 7 days after they end: a job recorded by a run that stopped
    long ago is given up, and its rows (still after the position) go again."""
    bulk(scenario)
    scenario.add_many(range(1, 801))
    _record_job(scenario, "750Sb0000000999IAA", 800)
    result = scenario.run()
    assert result.outcome is RunOutcome.COMPLETED and result.counts.exported == 800
    [gone] = scenario.sql("SELECT status, error FROM bulk_jobs WHERE job_id = '750Sb0000000999IAA'")
    assert gone["status"] == "failed" and "no longer knows it" in gone["error"]
    assert len(scenario.contacts()) == 800


def test_an_upload_retried_after_it_landed_goes_in_a_new_job_not_a_failed_run(
    scenario: Scenario,
) -> None:
    # The org takes the first upload, then the connection drops before its answer is read
    # (a load balancer cutting it after the server handled the request). The sink sends it
    # again on the same job, which then holds it twice and cannot be closed. Seed 7 draws
    # 0.48, 0.76, 0.94 for the first three uploads: only the first is cut.
    bulk(scenario)
    scenario.add_many(range(1, 801))
    scenario.sandbox.set_faults(reset_rate=0.6, paths="/batches$")
    result = scenario.run()

    assert result.outcome is RunOutcome.COMPLETED, result.error
    assert (result.counts.exported, result.counts.failed) == (800, 0)
    counted = calls(scenario)
    assert scenario.sandbox.counters()["faults"]["reset"] == 1
    assert counted["bulk_create"] == 2 and counted["bulk_upload"] == 3
    jobs = {j["id"]: j["state"] for j in _jobs(scenario)}
    recorded = scenario.sql("SELECT job_id, status, error FROM bulk_jobs ORDER BY created_at")
    assert [r["status"] for r in recorded] == ["failed", "done"]
    assert "twice" in recorded[0]["error"]
    assert jobs[recorded[0]["job_id"]] == "Aborted"
    assert jobs[recorded[1]["job_id"]] == "JobComplete"
    # Every record in the org once, written once; nothing in ExportErrors.
    assert sorted(scenario.written(), key=int) == [str(k) for k in range(1, 801)]
    assert len(scenario.contacts()) == 800 and scenario.open_errors() == {}
    [run] = scenario.sql("SELECT records_exported, records_failed FROM export_runs")
    assert run == {"records_exported": 800, "records_failed": 0}
    assert scenario.run().counts.read == 0


def test_a_recorded_job_is_given_up_when_an_operator_reset_the_stream(
    scenario: Scenario,
) -> None:
    bulk(scenario, "bulk_poll_timeout_seconds = 0.1\n")
    scenario.add_many(range(1, 51))  # below the threshold: Collections, position after 50
    assert scenario.run().counts.exported == 50
    scenario.add_many(range(51, 851))
    scenario.sandbox.set_faults(bulk_job_seconds=1.0)
    first = scenario.run()  # gives up polling: the job stays recorded, after row 50
    assert first.outcome is RunOutcome.FAILED
    [recorded] = scenario.sql("SELECT job_id, status FROM bulk_jobs")
    assert recorded["status"] == "open"

    reset = subprocess.run(
        [
            *(sys.executable, "-m", "crm_export", "stream", "reset", "contacts"),
            *("--to-start", "--yes", "--config", str(scenario.config().path)),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SF_CLIENT_SECRET": scenario.sandbox.client_secret},
        timeout=120,
    )
    assert reset.returncode == 0, reset.stderr
    scenario.sandbox.set_faults(bulk_job_seconds=0)
    second = scenario.run(export_lines=BULK)
    assert second.outcome is RunOutcome.COMPLETED, second.error
    # The recorded job covered rows after a position that is no longer the stream's: it
    # is given up (its rows are read again from the start), not acknowledged.
    jobs = scenario.sql("SELECT job_id, status, error FROM bulk_jobs ORDER BY created_at")
    assert jobs[0]["job_id"] == recorded["job_id"] and jobs[0]["status"] == "failed"
    assert "position moved" in jobs[0]["error"]
    assert [j["status"] for j in jobs[1:]] == ["done"]
    # Read again from the start: the 50 sent by Collections are known unchanged.
    assert (second.counts.read, second.counts.exported, second.counts.unchanged) == (850, 800, 50)
    contacts = scenario.contacts()
    assert sorted(contacts, key=int) == [str(k) for k in range(1, 851)]
    assert scenario.open_errors() == {}
    assert scenario.run().counts.read == 0


def test_a_row_changed_while_its_older_version_is_in_a_job_waits_for_that_job(
    scenario: Scenario,
) -> None:
    # Job 1 holds rows 1-1000 and is slow (2 s). While it is being uploaded, row 5 changes
    # and row 1400 is deleted, so job 2 holds rows 1001-1399 and row 5 again; it would
    # finish first (0.8 s). The older version must not land last: job 2 starts only once
    # job 1 is done.
    bulk(scenario, "bulk_max_jobs_in_flight = 2\n")
    scenario.add_many(range(1, 1401))
    scenario.sandbox.set_faults(bulk_records_per_second=500, latency_ms=500, paths="/batches$")
    changed = threading.Event()

    def change_row_5_during_the_first_upload() -> None:
        deadline = time.monotonic() + 30
        while not scenario.sandbox.jobs() and time.monotonic() < deadline:
            time.sleep(0.01)
        scenario.update(5, last_name="Later")
        scenario.delete(1400)
        changed.set()

    changer = threading.Thread(target=change_row_5_during_the_first_upload)
    changer.start()
    result = scenario.run()
    changer.join()
    assert changed.is_set()

    assert result.outcome is RunOutcome.COMPLETED, result.error
    jobs = scenario.sandbox.jobs()
    assert len(jobs) == 2 and {j["state"] for j in jobs} == {"JobComplete"}
    assert scenario.contacts()["5"]["LastName"] == "Later"
    # Both versions were written, the older first; every record once in the org.
    fives = [w for w in scenario.sandbox.writes() if w["external_id"] == "5"]
    assert [w["job_id"] for w in fives] == [j["id"] for j in jobs]
    assert len(scenario.contacts()) == 1399
    assert [j["status"] for j in scenario.sql("SELECT status FROM bulk_jobs")] == ["done"] * 2
    assert scenario.run().counts.read == 0
