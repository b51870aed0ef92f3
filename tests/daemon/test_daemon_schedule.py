"""`crm-export run` runs both jobs on their schedules, and `status` / `errors` then report it.

One daemon run serves every test here: the daily job's shortest schedule is a crontab
minute, so waiting for it once is what this module costs (at most ~70 s, ~35 s on average).
CRMExport runs every 2 s in skip mode; CRMExport_ExportError runs on "* * * * *". A rejected
contact is fixed in the source without moving its order_by value, so only the re-export can
bring it to the org: its write shows the cron job did real work.

The second stream holds records a spreadsheet would run as formulas: keys starting with =, +,
-, @, tab or CR, and an org rule whose error message starts with '-'. `errors --csv` must
defuse every such cell and `errors --json` must keep them raw.
"""

from __future__ import annotations

import csv
import itertools
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crm_export.report import guard_formula
from tests.daemon.daemon_kit import (
    DaemonProcess,
    external_ids,
    open_errors,
    overlapping_runs,
    poll,
    runs,
    write_daemon_config,
)
from tests.harness import (
    SandboxProcess,
    Stream,
    contact_rows,
    job_env,
    order_value,
    run_cli,
    sqlite_url,
    write_contacts,
)

INTERVAL = 2
CONTACTS = contact_rows(range(1, 31), reject_every=10)  # 10, 20 and 30 are rejected
FIXED_KEY = "10"

# Each key starts with a character a spreadsheet treats as a formula; all are rejected.
FORMULA_KEYS = ['=HYPERLINK("https://evil.test","open")', "+41 22 000 00 00", "-7", "@SUM(1+1)"]
FORMULA_KEYS += ["\tTAB-1", "\rCR-1"]
HOLD_KEY = "HOLD-1"  # rejected by the rule whose message starts with '-'
HOLD_MESSAGE = "- compliance hold: ask legal before exporting"
LEAD_OK = "L-1"


@dataclass
class ScheduleRun:
    workdir: Path
    state_url: str
    config: Path
    daemon: DaemonProcess
    sandbox: SandboxProcess
    fixed_at: datetime
    exit_code: int


def write_leads(path: Path) -> None:
    rows: list[tuple[Any, ...]] = [(LEAD_OK, "Lea", "Ok", "lea@acme.test", None, order_value(1))]
    rows += [
        (key, "Evil", "Cell", f"x{i}@example.invalid", None, order_value(10 + i))
        for i, key in enumerate(FORMULA_KEYS)
    ]
    rows.append((HOLD_KEY, "Held", "Back", "held@acme.test", "HOLD", order_value(50)))
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE leads (id TEXT PRIMARY KEY, first_name TEXT, last_name TEXT, "
            "email TEXT, title TEXT, updated_at TEXT NOT NULL)"
        )
        db.executemany("INSERT INTO leads VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.close()


def seconds_to_next_minute() -> float:
    now = datetime.now(UTC)
    return 60 - now.second - now.microsecond / 1e6


@pytest.fixture(scope="module")
def schedule_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScheduleRun]:
    workdir = tmp_path_factory.mktemp("schedule")
    source = workdir / "source.db"
    write_contacts(source, CONTACTS.rows)
    write_leads(source)
    with SandboxProcess(workdir) as sandbox:
        sandbox.admin.set_org(
            patch={
                "objects": {
                    "Contact": {
                        "validation_rules": {
                            "Compliance_Hold": {
                                "error_message": HOLD_MESSAGE,
                                "error_field": "Title",
                                "when": {"field": "Title", "op": "eq", "value": "HOLD"},
                            }
                        }
                    }
                }
            }
        )
        state_url = sqlite_url(workdir / "state.db")
        config = write_daemon_config(
            workdir / "crm-export.toml",
            state_url=state_url,
            org=sandbox.org,
            streams=[
                Stream("contacts", sqlite_url(source)),
                Stream("leads", sqlite_url(source), table="leads"),
            ],
            pause_on_error=False,
            interval=INTERVAL,
            cron="* * * * *",
        )
        # The fix below should land before the next cron run: start with some time to spare.
        # (If a slow machine misses it, the wait below takes the following minute's run.)
        if seconds_to_next_minute() < 8:
            time.sleep(seconds_to_next_minute() + 0.5)
        with DaemonProcess(config, workdir / "daemon.log") as daemon:
            daemon.wait_for_event("job_finished", job="CRMExport")
            poll(lambda: FIXED_KEY in open_errors(state_url), "contact 10 in ExportErrors")
            with sqlite3.connect(source) as db:
                db.execute(
                    "UPDATE contacts SET email = 'fixed10@acme.test' WHERE id = ?", (FIXED_KEY,)
                )
            db.close()
            fixed_at = datetime.now(UTC)
            poll(
                lambda: reexports_after(state_url, fixed_at),
                "a CRMExport_ExportError run that started after the fix",
                timeout=150,
                context=daemon.tail,
            )
            # A few more intervals, so that CRMExport is seen running after the cron job too.
            done = len(daemon.jobs_finished("CRMExport"))
            daemon.wait_for_event("job_finished", count=done + 2, job="CRMExport")
            exit_code = daemon.stop()
            yield ScheduleRun(workdir, state_url, config, daemon, sandbox, fixed_at, exit_code)


def reexports_after(state_url: str, moment: datetime) -> list[dict[str, Any]]:
    """The finished re-export runs of both streams that started after ``moment``."""
    later = [
        r
        for r in runs(state_url, "CRMExport_ExportError")
        if _ts(r["started_at"]) > moment and r["finished_at"] is not None
    ]
    return later if {r["stream"] for r in later} == {"contacts", "leads"} else []


def _ts(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_crm_export_runs_repeatedly_on_its_interval(schedule_run: ScheduleRun) -> None:
    export_runs = [
        r for r in runs(schedule_run.state_url, "CRMExport") if r["stream"] == "contacts"
    ]
    assert len(export_runs) >= 4, export_runs
    starts = [_ts(r["started_at"]) for r in export_runs]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # The trigger fires every INTERVAL s: runs are spaced out, never back to back (a run takes
    # well under a second). Half the interval leaves room for a slow login on a busy machine.
    assert min(gaps) > INTERVAL * 0.5, gaps
    assert {r["outcome"] for r in export_runs} == {"completed"}
    finished = schedule_run.daemon.jobs_finished("CRMExport")
    assert len(finished) >= len(export_runs)
    assert finished[0]["outcomes"] == {"contacts": "completed", "leads": "completed"}


def test_the_reexport_runs_on_its_cron_and_resolves_the_fixed_record(
    schedule_run: ScheduleRun,
) -> None:
    reexports = reexports_after(schedule_run.state_url, schedule_run.fixed_at)
    assert reexports
    started = _ts(reexports[0]["started_at"])
    # "* * * * *" fires at the top of a minute; the run starts within moments of it.
    assert started.second < 10, started
    finished = schedule_run.daemon.jobs_finished("CRMExport_ExportError")
    assert finished and finished[0]["outcomes"] == {"contacts": "completed", "leads": "completed"}

    errors = {
        r["record_key"]: r for r in runs_errors(schedule_run.state_url) if r["stream"] == "contacts"
    }
    assert errors[FIXED_KEY]["resolved_at"] is not None
    assert errors[FIXED_KEY]["status"] == "resolved"
    assert open_errors(schedule_run.state_url).keys() >= {"20", "30"}
    # The org wrote contact 10 once, after the fix and by the re-export's request: the
    # skip-mode CRMExport runs never went back to it.
    writes = [w for w in schedule_run.sandbox.admin.writes() if w["external_id"] == FIXED_KEY]
    assert len(writes) == 1, writes
    assert _ts(writes[0]["time"]) >= schedule_run.fixed_at
    assert _ts(writes[0]["time"]) >= started
    contact = next(
        r for r in schedule_run.sandbox.admin.records("Contact") if r["External_Id__c"] == "10"
    )
    assert contact["Email"] == "fixed10@acme.test"


def runs_errors(state_url: str) -> list[dict[str, Any]]:
    from tests.harness import sql

    return sql(state_url, "SELECT * FROM ExportErrors ORDER BY id")


def test_the_jobs_never_overlap_and_each_record_is_in_the_org_once(
    schedule_run: ScheduleRun,
) -> None:
    assert not overlapping_runs(runs(schedule_run.state_url))
    in_org = external_ids(schedule_run.sandbox.admin)
    expected = CONTACTS.accepted | {FIXED_KEY, LEAD_OK}
    assert set(in_org) == expected
    assert max(in_org.values()) == 1


def test_the_log_tells_an_operator_what_the_daemon_does(schedule_run: ScheduleRun) -> None:
    daemon = schedule_run.daemon
    assert schedule_run.exit_code == 0
    names = [e["event"] for e in daemon.events()]
    assert names.index("active") < names.index("daemon_started") < names.index("job_started")
    assert names[-1] == "daemon_stopped"
    started = daemon.events("daemon_started")[0]
    assert started["export_interval_seconds"] == INTERVAL
    assert started["reexport_cron"] == "* * * * *"
    assert started["pause_on_error"] == {"contacts": False, "leads": False}
    beats = daemon.events("heartbeat", role="active")
    assert beats, names
    assert set(beats[-1]["next_runs"]) == {"CRMExport", "CRMExport_ExportError"}
    # The last heartbeat says how each job last ended, for whoever reads only that line.
    last_jobs = beats[-1]["last_jobs"]
    assert last_jobs["CRMExport"]["outcomes"] == {"contacts": "completed", "leads": "completed"}
    assert "CRMExport_ExportError" in last_jobs
    for job in ("CRMExport", "CRMExport_ExportError"):
        assert daemon.events("job_started", job=job)
    assert daemon.plain_lines() == []
    for event in daemon.events():
        assert "sandbox-secret" not in json.dumps(event)
        assert event["level"] in {"info", "warning", "error"}
        assert "timestamp" in event


def test_status_json_reports_each_stream(schedule_run: ScheduleRun) -> None:
    result = run_cli(
        "status", "--json", "--config", str(schedule_run.config), env=job_env("sandbox-secret")
    )
    assert result.returncode == 0, result.stderr
    status = {s["stream"]: s for s in json.loads(result.stdout)}
    assert set(status) == {"contacts", "leads"}
    contacts = status["contacts"]
    assert contacts["paused"] is None
    assert contacts["pause_on_error"] is False
    assert contacts["position"]["key"] == 30  # typed as in the source, not as text
    assert contacts["position"]["order_by"] == CONTACTS.rows[-1]["updated_at"]
    assert contacts["open_errors"] == 2  # 20 and 30; 10 was resolved by the re-export
    assert contacts["last_run"]["outcome"] == "completed"
    assert contacts["last_run"]["job_id"] in {"CRMExport", "CRMExport_ExportError"}
    assert status["leads"]["open_errors"] == len(FORMULA_KEYS) + 1


def test_errors_csv_defuses_formulas_and_json_keeps_them_raw(schedule_run: ScheduleRun) -> None:
    env = job_env("sandbox-secret")
    config = str(schedule_run.config)
    raw = run_cli("errors", "--json", "--stream", "leads", "--config", config, env=env)
    assert raw.returncode == 0, raw.stderr
    json_rows = json.loads(raw.stdout)
    by_key = {r["record_key"]: r for r in json_rows}
    assert set(by_key) == set(FORMULA_KEYS) | {HOLD_KEY}
    assert by_key[HOLD_KEY]["error_message"] == HOLD_MESSAGE
    assert by_key["-7"]["external_id"] == "-7"

    csv_path = schedule_run.workdir / "errors.csv"
    written = run_cli(
        "errors", "--csv", str(csv_path), "--stream", "leads", "--config", config, env=env
    )
    assert written.returncode == 0, written.stderr
    assert f"wrote {len(json_rows)} rows" in written.stdout
    with csv_path.open(newline="", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(json_rows)
    for json_row, csv_row in zip(json_rows, csv_rows, strict=True):
        for column, value in json_row.items():
            if isinstance(value, str):
                assert csv_row[column] == guard_formula(value), column
    by_csv_key = {r["record_key"]: r for r in csv_rows}
    # Every cell a spreadsheet would run starts with the guard's quote instead...
    assert set(by_csv_key) == {"'" + key for key in FORMULA_KEYS} | {HOLD_KEY}
    for key in FORMULA_KEYS:
        assert by_csv_key["'" + key]["external_id"] == "'" + key
    assert by_csv_key[HOLD_KEY]["error_message"] == "'" + HOLD_MESSAGE
    # ...and nothing else is touched.
    assert by_csv_key[HOLD_KEY]["external_id"] == HOLD_KEY
    assert by_csv_key[HOLD_KEY]["error_code"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
