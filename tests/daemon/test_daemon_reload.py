"""Editing the config of a running `crm-export run`: no restart, and no bad edit obeyed.

The daemon re-reads its config before every run (1 s interval here). The sandbox org's own
write log shows what each edit did to Salesforce.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.daemon.daemon_kit import (
    SECRET,
    DaemonProcess,
    external_ids,
    open_errors,
    poll,
    replace_config_text,
    runs,
    write_daemon_config,
    written_keys,
)
from tests.harness import (
    SandboxProcess,
    Stream,
    contact_rows,
    job_env,
    run_cli,
    sqlite_url,
    write_contacts,
)


def paused_runs(state_url: str) -> list[dict[str, object]]:
    return [r for r in runs(state_url, "CRMExport") if r["outcome"] == "paused"]


def test_turning_pause_mode_off_takes_effect_at_the_next_run(tmp_path: Path) -> None:
    contacts = contact_rows(range(1, 21), reject_every=5)  # 5, 10, 15 and 20 are rejected
    source = tmp_path / "source.db"
    write_contacts(source, contacts.rows)
    state_url = sqlite_url(tmp_path / "state.db")
    with SandboxProcess(tmp_path) as sandbox:
        streams = [Stream("contacts", sqlite_url(source))]

        def configure(pause: bool) -> Path:
            return write_daemon_config(
                tmp_path / "crm-export.toml",
                state_url=state_url,
                org=sandbox.org,
                streams=streams,
                pause_on_error=pause,
            )

        with DaemonProcess(configure(True), tmp_path / "daemon.log") as daemon:
            # Paused at 5, and still paused after two more runs retried it.
            poll(lambda: len(paused_runs(state_url)) >= 3, "three paused runs", context=daemon.tail)
            assert sorted(written_keys(sandbox.admin), key=int) == ["1", "2", "3", "4"]
            status = run_cli(
                "status", "--json", "--config", str(daemon.config), env=job_env(SECRET)
            )
            paused = json.loads(status.stdout)[0]["paused"]
            assert paused["record_key"] == "5"
            assert paused["error_code"] == contacts.rejected["5"]
            assert paused["waiting_behind"] == 15

            before = len(sandbox.admin.writes())
            configure(False)
            daemon.wait_for_event("pause_mode_off", stream="contacts")
            poll(
                lambda: set(external_ids(sandbox.admin)) == contacts.accepted,
                "every accepted contact in the org",
                context=daemon.tail,
            )
            # Skip mode wrote the rows behind the paused record in source order, and never 5.
            later = written_keys(sandbox.admin)[before:]
            assert later == sorted(contacts.accepted - {"1", "2", "3", "4"}, key=int)
            poll(lambda: open_errors(state_url) == contacts.rejected, "the rejects in ExportErrors")
            assert daemon.alive()
        warning = daemon.events("pause_mode_off")[0]
        assert warning["level"] == "warning"
        assert "skipped" in warning["detail"]
        assert len(daemon.events("daemon_started")) == 1


def test_a_bad_edit_keeps_the_last_good_config_and_a_fixed_one_is_picked_up(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source.db"
    write_contacts(source, contact_rows(range(1, 11)).rows)
    state_url = sqlite_url(tmp_path / "state.db")
    with SandboxProcess(tmp_path) as sandbox:
        config = write_daemon_config(
            tmp_path / "crm-export.toml",
            state_url=state_url,
            org=sandbox.org,
            streams=[Stream("contacts", sqlite_url(source))],
        )
        good = config.read_text(encoding="utf-8")
        with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
            poll(lambda: len(external_ids(sandbox.admin)) == 10, "the first ten contacts")

            # A typo'd key meant to turn pause mode off, and a batch size the API refuses.
            bad = good.replace("pause_on_error = true", "pause_on_eror = false")
            replace_config_text(config, bad.replace("batch_size = 200", "batch_size = 0"))
            invalid = daemon.wait_for_event("config_invalid")[0]
            problems = " ".join(invalid["problems"])
            assert "pause_on_eror" in problems and "batch_size" in problems
            assert invalid["path"] == str(config)

            # New rows, one rejected: the last good config is still in pause mode, so the
            # rows behind the reject must wait, whatever the bad file said.
            more = contact_rows(range(11, 16))
            more.rows[2]["email"] = "13@example.invalid"
            write_contacts(source, more.rows)
            poll(lambda: "13" in open_errors(state_url), "contact 13 rejected", context=daemon.tail)
            runs_seen = len(daemon.jobs_finished("CRMExport"))
            daemon.wait_for_event("job_finished", count=runs_seen + 2, job="CRMExport")
            assert set(external_ids(sandbox.admin)) == {str(k) for k in range(1, 13)}
            assert daemon.alive()

            # The fixed edit turns pause mode off; the next run skips 13.
            replace_config_text(
                config, good.replace("pause_on_error = true", "pause_on_error = false")
            )
            daemon.wait_for_event("pause_mode_off", stream="contacts")
            poll(
                lambda: set(external_ids(sandbox.admin)) == {str(k) for k in range(1, 16)} - {"13"},
                "contacts 14 and 15 after the fixed edit",
                context=daemon.tail,
            )

            # Pointing the running daemon at another state database needs a restart.
            moved = tmp_path / "elsewhere.db"
            text = config.read_text(encoding="utf-8")
            replace_config_text(config, text.replace(state_url, sqlite_url(moved)))
            refused = daemon.wait_for_event("config_restart_required")[0]
            assert refused["key"] == "database.url"
            write_contacts(source, contact_rows(range(16, 18)).rows)
            poll(lambda: "17" in external_ids(sandbox.admin), "contact 17", context=daemon.tail)
            assert not moved.exists()
            assert daemon.alive()
        assert len(daemon.events("daemon_started")) == 1


def test_run_exits_2_naming_the_key_when_the_config_is_invalid_at_start(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    write_contacts(source, contact_rows(range(1, 3)).rows)
    with SandboxProcess(tmp_path) as sandbox:
        config = write_daemon_config(
            tmp_path / "crm-export.toml",
            state_url=sqlite_url(tmp_path / "state.db"),
            org=sandbox.org,
            streams=[Stream("contacts", sqlite_url(source))],
            cron="0 2 * * * *",
        )
        result = run_cli("run", "--config", str(config), env=job_env(SECRET), timeout=60)
        assert sandbox.admin.counters()["api_usage"]["used"] == 0
    assert result.returncode == 2, result.stderr
    assert str(config) in result.stderr
    assert "schedule.reexport_cron" in result.stderr
    assert not (tmp_path / "state.db").exists()


def test_run_exits_1_when_the_state_database_is_not_crm_exports(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    write_contacts(source, contact_rows(range(1, 3)).rows)
    foreign = tmp_path / "someone-elses.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    db.close()
    with SandboxProcess(tmp_path) as sandbox:
        config = write_daemon_config(
            tmp_path / "crm-export.toml",
            state_url=sqlite_url(foreign),
            org=sandbox.org,
            streams=[Stream("contacts", sqlite_url(source))],
        )
        result = run_cli("run", "--config", str(config), env=job_env(SECRET), timeout=60)
        assert sandbox.admin.counters()["api_usage"]["used"] == 0
    assert result.returncode == 1, result.stderr
    event = json.loads(result.stderr.splitlines()[-1])
    assert event["event"] == "cannot_start"
    assert "crm-export db upgrade" in event["error"]
    with sqlite3.connect(foreign) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert tables == {"invoices"}
