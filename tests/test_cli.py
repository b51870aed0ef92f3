"""The command line as users run it: real subprocesses, real files, the sandbox org."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_export.sandbox.testing import SandboxHandle, running_sandbox


def crm_export(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_export", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


def make_config(tmp: Path, sandbox: SandboxHandle, extra: str = "") -> Path:
    with sqlite3.connect(tmp / "app.db") as db:
        db.execute(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, last_name TEXT, email TEXT, "
            "updated_at TEXT)"
        )
        db.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?, ?)",
            [
                (1, "Lovelace", "ada@acme.test", "2026-01-01 00:00:01"),
                (2, "Hopper", "not-an-email", "2026-01-01 00:00:02"),
                (3, "Turing", "alan@acme.test", "2026-01-01 00:00:03"),
            ],
        )
    path = tmp / "crm-export.toml"
    path.write_text(f"""
[database]
url = "sqlite:///state.db"

[salesforce]
login_url = "{sandbox.base_url}"
client_id = "{sandbox.client_id}"
client_secret_env = "SF_CLIENT_SECRET"
ca_bundle = "{sandbox.ca_path}"
{extra}
[logging]
format = "json"

[[streams]]
name = "contacts"
table = "contacts"
source_url = "sqlite:///app.db"
key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"

[streams.fields]
LastName = "last_name"
Email = "email"
""")
    return path


def test_job_prints_a_summary_per_stream_and_exits_0_when_paused(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox)
    env = {"SF_CLIENT_SECRET": sandbox.client_secret}
    done = crm_export("job", "CRMExport", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "CRMExport contacts: paused - read 2 = exported 1 + unchanged 0 + failed 0 + paused 1 "
        "+ superseded 0; API calls 3, logins 1"  # the describe of Contact, then two upserts
    )
    assert "paused at record 2 (INVALID_EMAIL_ADDRESS" in done.stdout
    assert '"event": "record_failed"' in done.stderr and '"key": "2"' in done.stderr
    assert sandbox.client_secret not in done.stdout + done.stderr

    # CRM_EXPORT_CONFIG works as well as --config.
    again = crm_export(
        "job", "CRMExport_ExportError", env={**env, "CRM_EXPORT_CONFIG": str(config)}
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("CRMExport_ExportError contacts: completed - read 1")


def test_a_failed_run_exits_1(tmp_path: Path, sandbox: SandboxHandle) -> None:
    config = make_config(tmp_path, sandbox)
    done = crm_export(
        "job", "CRMExport", "--config", str(config), env={"SF_CLIENT_SECRET": "wrong-secret-value"}
    )
    assert done.returncode == 1
    assert "CRMExport contacts: failed" in done.stdout
    assert "invalid_client" in done.stdout
    assert "wrong-secret-value" not in done.stdout + done.stderr


def test_a_bad_config_exits_2_names_every_key_and_writes_nothing(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox, extra="pause_on_eror = true\n")
    text = config.read_text().replace("[logging]", "[export]\nbatch_size = 500\n\n[logging]")
    config.write_text(text)
    done = crm_export(
        "job", "CRMExport", "--config", str(config), env={"SF_CLIENT_SECRET": sandbox.client_secret}
    )
    assert done.returncode == 2
    assert str(config) in done.stderr
    assert "salesforce.pause_on_eror" in done.stderr
    assert "export.batch_size" in done.stderr
    assert not (tmp_path / "state.db").exists()
    assert sandbox.counters()["calls"].get("token", 0) == 0


def test_db_commands_and_the_outdated_database_message(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox, extra="")
    text = config.read_text().replace("sqlite:///state.db", "sqlite:///other.db")
    config.write_text(text)
    env = {"SF_CLIENT_SECRET": sandbox.client_secret}
    # A SQLite file that exists but was never migrated is not touched: it may be someone's.
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE unrelated (x)")
    status = crm_export("status", "--config", str(config), env=env)
    assert status.returncode == 1
    assert "crm-export db upgrade" in status.stderr

    sql = crm_export("db", "upgrade", "--sql", "--config", str(config), env=env)
    assert sql.returncode == 0 and "CREATE TABLE exporterrors" in sql.stdout
    up = crm_export("db", "upgrade", "--config", str(config), env=env)
    assert up.returncode == 0, up.stderr
    current = crm_export("db", "current", "--config", str(config), env=env)
    assert current.stdout.strip() == up.stdout.strip().split()[-1]
    assert crm_export("status", "--config", str(config), env=env).returncode == 0


def test_demo_runs_the_main_job_on_the_embedded_defaults(tmp_path: Path) -> None:
    done = crm_export("demo", "--dir", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    # The accounts go first, though the file lists contacts first: contacts look them up.
    accounts_line = done.stdout.index("CRMExport accounts: completed - read 3 = exported 3")
    contacts_line = (
        "CRMExport contacts: paused - read 8 = exported 7 + unchanged 0 + failed 0 + paused 1"
    )
    assert accounts_line < done.stdout.index(contacts_line)
    assert "paused at record 8 (FIELD_CUSTOM_VALIDATION_EXCEPTION" in done.stdout
    # Each exported contact points at its account, found by the account's external ID.
    with sqlite3.connect(tmp_path / "demo" / "sandbox-records.db") as org:
        stored = [(s, json.loads(d)) for s, d in org.execute("SELECT sobject, data FROM records")]
    account_ids = {r["External_Id__c"]: r["Id"] for s, r in stored if s == "Account"}
    contacts = {r["External_Id__c"]: r.get("AccountId") for s, r in stored if s == "Contact"}
    assert contacts["1"] == account_ids["ACME"] and contacts["2"] == account_ids["GLOBEX"]
    assert contacts["5"] is None  # no account in the source
    assert "SELECT stream, record_key, error_code" in done.stdout
    with sqlite3.connect(tmp_path / "demo" / "state.db") as db:
        rows = db.execute("SELECT record_key, error_code FROM ExportErrors").fetchall()
    assert rows == [("8", "FIELD_CUSTOM_VALIDATION_EXCEPTION")]

    # The user follows the printed advice: fix the row, run the job again.
    with sqlite3.connect(tmp_path / "demo" / "app.db") as db:
        db.execute(
            "UPDATE contacts SET email = 'maria@acme.test', "
            "updated_at = CURRENT_TIMESTAMP WHERE id = 8"
        )
    config = str(tmp_path / "demo" / "crm-export.toml")
    again = crm_export("job", "CRMExport", "--config", config)
    assert again.returncode == 0
    # Record 8 went through; the stream now stops at the next record the org rejects.
    assert "paused at record 11 (CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY" in again.stdout
    with sqlite3.connect(tmp_path / "demo" / "state.db") as db:
        resolved = db.execute(
            "SELECT resolved_at IS NOT NULL FROM ExportErrors WHERE record_key = '8'"
        ).fetchone()
    assert resolved == (1,)


def test_job_does_not_run_beside_an_active_runner_and_can_wait_for_it(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    from crm_export.store import runner_lock

    config = make_config(tmp_path, sandbox)
    env = {"SF_CLIENT_SECRET": sandbox.client_secret}
    lock = runner_lock(f"sqlite:///{tmp_path / 'state.db'}")  # what a running daemon holds
    assert lock.acquire()
    try:
        refused = crm_export("job", "CRMExport", "--config", str(config), env=env)
    finally:
        lock.release()
    assert refused.returncode == 1
    assert "another runner is active" in refused.stderr and "--wait" in refused.stderr
    assert sandbox.counters()["calls"].get("token", 0) == 0

    done = crm_export("job", "CRMExport", "--wait", "5", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("CRMExport contacts: paused")


def test_job_on_an_unreachable_postgres_names_the_database_not_another_runner(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    config = make_config(tmp_path, sandbox)
    url = f"postgresql+psycopg://crm@127.0.0.1:{port}/state"
    config.write_text(config.read_text().replace("sqlite:///state.db", url))
    env = {"SF_CLIENT_SECRET": sandbox.client_secret}
    for args in (["job", "CRMExport"], ["run"]):
        done = crm_export(*args, "--config", str(config), env=env)
        assert done.returncode == 1, (args, done.stderr)
        assert f"127.0.0.1:{port}/state is unavailable" in done.stderr, done.stderr
        assert "another runner" not in done.stderr and "standby" not in done.stderr
    assert sandbox.counters()["calls"].get("token", 0) == 0


def test_job_and_run_exit_1_naming_the_lock_file_when_it_can_not_be_created(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox)
    # The state database's directory is a file, so its lock file can not be made beside it.
    (tmp_path / "not-a-dir").write_text("")
    text = config.read_text().replace("sqlite:///state.db", "sqlite:///not-a-dir/state.db")
    config.write_text(text)
    env = {"SF_CLIENT_SECRET": sandbox.client_secret}
    for args in (["job", "CRMExport"], ["run"]):
        done = crm_export(*args, "--config", str(config), env=env)
        assert done.returncode == 1, (args, done.stderr)
        assert "cannot create the runner lock file" in done.stderr, done.stderr
        assert "not-a-dir/state.runner.lock" in done.stderr
        assert "Traceback" not in done.stderr
    assert sandbox.counters()["calls"].get("token", 0) == 0


def test_files_holding_record_data_are_readable_by_their_owner_only(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox)
    env = {"SF_CLIENT_SECRET": sandbox.client_secret}
    previous = os.umask(0o022)
    try:
        assert crm_export("job", "CRMExport", "--config", str(config), env=env).returncode == 0
        fresh = tmp_path / "fresh.csv"
        existing = tmp_path / "existing.csv"
        existing.write_text("old export\n")
        existing.chmod(0o644)
        for out in (fresh, existing):
            done = crm_export("errors", "--csv", str(out), "--config", str(config), env=env)
            assert done.returncode == 0, done.stderr
            # Record keys, messages and payloads: personal data.
            assert "not-an-email" in out.read_text()
            assert out.stat().st_mode & 0o777 == 0o600, out
    finally:
        os.umask(previous)


def test_the_sandbox_data_file_is_private(tmp_path: Path) -> None:
    from crm_export.sandbox.storage import RecordStore

    previous = os.umask(0o022)
    try:
        store = RecordStore(tmp_path / "records.db")
    finally:
        os.umask(previous)
    store.close()
    assert (tmp_path / "records.db").stat().st_mode & 0o777 == 0o600
