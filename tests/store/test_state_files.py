"""The SQLite state database's files stay private to the user running crm-export.

ExportErrors payloads hold names and emails. Under the usual umask 022 a new file would be
readable by every local user; these tests create real files under that umask and look at
the modes on disk, and at the warning for a state file someone made readable.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_export.ports import BatchAck, Position
from crm_export.store import runner_lock
from crm_export.wiring import open_store
from tests.harness import Stream, job_env, run_cli, sqlite_url, write_contacts
from tests.store.store_kit import failure


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_a_new_state_database_its_sidecars_its_lock_and_directories_are_private(
    tmp_path: Path,
) -> None:
    (tmp_path / "plain").write_text("")
    assert mode(tmp_path / "plain") == 0o644  # what the umask gives any other new file

    state_dir = tmp_path / "var" / "crm-export"  # does not exist yet
    url = sqlite_url(state_dir / "state.db")
    lock = runner_lock(url)  # as the daemon starts: the lock first, then the schema
    assert lock.acquire()
    try:
        with open_store(url) as store:
            run = store.begin_run("CRMExport", "contacts")
            store.acknowledge(
                BatchAck("contacts", run, position=Position(1, 1), failures=[failure("7")])
            )
            # While the store is open, SQLite keeps its write-ahead log and shared memory.
            files = ["state.db", "state.db-wal", "state.db-shm", "state.runner.lock"]
            assert {name: oct(mode(state_dir / name)) for name in files} == dict.fromkeys(
                files, oct(0o600)
            )
            assert store.list_errors()[0]["payload"]  # the personal data is in there
    finally:
        lock.release()
    assert (mode(tmp_path / "var"), mode(state_dir)) == (0o700, 0o700)


def status_config(tmp_path: Path, state: Path) -> Path:
    source = tmp_path / "app.db"
    write_contacts(source, [])
    config = tmp_path / "crm-export.toml"
    config.write_text(
        f"""
[database]
url = {json.dumps(sqlite_url(state))}

[salesforce]
login_url = "https://acme.my.salesforce.com"
client_id = "crm-export-test"
client_secret_env = "SF_CLIENT_SECRET"

[logging]
format = "json"

{Stream("contacts", sqlite_url(source)).toml()}
""",
        encoding="utf-8",
    )
    return config


def warnings(stderr: str) -> list[dict[str, str]]:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == "state_file_readable"]


@pytest.mark.usefixtures("umask_022")
def test_a_state_file_other_users_can_read_is_named_at_start_with_the_fix(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.db"
    config = status_config(tmp_path, state)
    env = job_env("unused")

    first = run_cli("status", "--config", str(config), env=env)  # creates the database
    assert first.returncode == 0, first.stderr
    assert mode(state) == 0o600 and warnings(first.stderr) == []

    state.chmod(0o644)  # as an older crm-export, or a copy with cp, left it
    done = run_cli("status", "--config", str(config), env=env)

    assert done.returncode == 0, done.stderr
    [warning] = warnings(done.stderr)
    assert warning["level"] == "warning"
    assert (warning["path"], warning["mode"]) == (str(state), "0644")
    assert warning["fix"] == f"chmod 600 {state}"
    assert mode(state) == 0o644  # reported, not changed behind the owner's back
