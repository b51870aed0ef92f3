"""Change detection end to end: over HTTPS against the sandbox org, with the org's own call
counters, on SQLite and PostgreSQL state."""

from __future__ import annotations

import subprocess
import sys

from crm_export.ports import RunOutcome
from tests.export.export_scenario import Scenario


def upserts(scenario: Scenario) -> int:
    return int(scenario.sandbox.counters()["calls"].get("composite_upsert", 0))


def test_re_touching_every_row_costs_no_upsert_call(scenario: Scenario) -> None:
    scenario.add_many(range(1, 10_001))
    first = scenario.run()
    assert first.outcome is RunOutcome.COMPLETED and first.counts.exported == 10_000
    assert upserts(scenario) == 50
    # The 50 upserts and the describe of Contact; the login is not charged.
    assert (first.counts.api_calls, first.counts.logins) == (51, 1)

    scenario.touch_all()  # updated_at bumped on 100% of the rows, nothing else
    again = scenario.run()

    assert again.outcome is RunOutcome.COMPLETED
    assert (again.counts.read, again.counts.unchanged, again.counts.exported) == (10_000,) * 2 + (
        0,
    )
    assert upserts(scenario) == 50  # the org saw no upsert at all
    assert (again.counts.api_calls, again.counts.logins) == (0, 0)  # not even a login
    [run] = scenario.sql(
        "SELECT records_read, records_unchanged, records_exported, api_calls, logins "
        "FROM export_runs ORDER BY id DESC LIMIT 1"
    )
    assert run == {
        "records_read": 10_000,
        "records_unchanged": 10_000,
        "records_exported": 0,
        "api_calls": 0,
        "logins": 0,
    }
    # The position moved over them: a third run reads nothing.
    assert scenario.run().counts.read == 0


def test_only_changed_rows_go_and_a_changed_mapping_resends(scenario: Scenario) -> None:
    scenario.add_many(range(1, 301))
    scenario.run()
    scenario.touch_all()
    scenario.update(17, last_name="Jones")
    changed = scenario.run()
    assert (changed.counts.exported, changed.counts.unchanged) == (1, 299)
    assert scenario.contacts()["17"]["LastName"] == "Jones"

    # Title joins the mapping: every payload changes, so every row read goes again.
    scenario.touch_all()
    fields = {**scenario.settings["fields"], "Description": "first_name"}
    widened = scenario.run(fields=fields)
    assert (widened.counts.exported, widened.counts.unchanged) == (300, 0)


def crm_export(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_export", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=120,
    )


def test_resend_all_and_stream_resync_from_the_command_line(scenario: Scenario) -> None:
    scenario.add_many(range(1, 251))
    config = scenario.config().path
    env = {"SF_CLIENT_SECRET": scenario.sandbox.client_secret}
    assert crm_export("job", "CRMExport", "--config", str(config), env=env).returncode == 0
    assert upserts(scenario) == 2

    # --resend-all sends every row the run reads; here: the re-touched ones.
    scenario.touch_all()
    done = crm_export("job", "CRMExport", "--resend-all", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert "read 250 = exported 250 + unchanged 0" in done.stdout
    assert upserts(scenario) == 4

    wrong = crm_export("job", "CRMExport_ExportError", "--resend-all", env=env)
    assert wrong.returncode == 2 and "--resend-all applies to CRMExport only" in wrong.stderr

    unknown = crm_export("stream", "resync", "nosuch", "--config", str(config), env=env)
    assert unknown.returncode == 2
    assert "no stream named 'nosuch'" in unknown.stderr and "contacts" in unknown.stderr

    # A resync: nothing changed in the source, yet the next run resends the whole stream.
    resync = crm_export("stream", "resync", "contacts", "--config", str(config), env=env)
    assert resync.returncode == 0, resync.stderr
    assert "forgetting the 250 fingerprints" in resync.stdout
    done = crm_export("job", "CRMExport", "--config", str(config), env=env)
    assert "read 250 = exported 250 + unchanged 0" in done.stdout
    assert upserts(scenario) == 6
    [state] = scenario.sql("SELECT resync_requested_at FROM stream_state")
    assert state["resync_requested_at"] is None
    # And then it is back to costing nothing.
    scenario.touch_all()
    done = crm_export("job", "CRMExport", "--config", str(config), env=env)
    assert "exported 0 + unchanged 250" in done.stdout and upserts(scenario) == 6


def test_status_forecasts_the_calls_of_the_rows_pending(scenario: Scenario) -> None:
    scenario.add_many(range(1, 101))
    scenario.run()
    scenario.add_many(range(101, 551))
    config = scenario.config().path
    env = {"SF_CLIENT_SECRET": scenario.sandbox.client_secret}
    done = crm_export("status", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    # The run spent two calls: the describe of Contact and one upsert.
    assert "the org's API usage: 2 of 5,000,000 daily calls" in done.stdout
    assert "crm-export stops at 4,000,000 (80%)" in done.stdout
    assert "450 rows pending need at most 3 Collections calls" in done.stdout
    assert "about 6 Bulk API 2.0 calls (an estimate" in done.stdout
