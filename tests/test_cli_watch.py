"""Watching a job from the command line (issue 12 §1): a live display on a terminal, and the
JSON log untouched without one. Real subprocesses, a real pseudo-terminal, the sandbox org."""

from __future__ import annotations

import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_export.sandbox.testing import SandboxHandle, running_sandbox


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


def make_config(tmp: Path, sandbox: SandboxHandle, rows: int = 450) -> Path:
    with sqlite3.connect(tmp / "app.db") as db:
        db.execute(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, last_name TEXT, updated_at TEXT)"
        )
        db.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?)",
            [(i, f"Last{i}", f"2026-01-01 00:{i // 60:02d}:{i % 60:02d}") for i in range(rows)],
        )
    db.close()
    path = tmp / "crm-export.toml"
    path.write_text(f"""
[database]
url = "sqlite:///state.db"

[salesforce]
login_url = "{sandbox.base_url}"
client_id = "{sandbox.client_id}"
client_secret_env = "SF_CLIENT_SECRET"
ca_bundle = "{sandbox.ca_path}"

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
""")
    return path


def run_on_a_terminal(
    args: list[str], env: dict[str, str], cwd: Path, *, stdout_too: bool = False
) -> tuple[int, str, str]:
    """Run crm-export with stderr (and ``stdout_too``) on a pseudo-terminal; (exit code,
    stdout, terminal text)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crm_export", *args],
        stdout=follower if stdout_too else subprocess.PIPE,
        stderr=follower,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "150", **env},
        cwd=cwd,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    out, _ = proc.communicate(timeout=120)
    stdout, code = (out or b"").decode(), proc.returncode
    terminal = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    return code, stdout, terminal


def test_job_on_a_terminal_shows_a_progress_line_per_stream(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox)
    code, stdout, terminal = run_on_a_terminal(
        ["job", "CRMExport", "--config", str(config)],
        {"SF_CLIENT_SECRET": sandbox.client_secret},
        tmp_path,
    )
    assert code == 0, terminal
    assert stdout.startswith(
        "CRMExport contacts: completed - read 450 = exported 450 + unchanged 0"
    )
    assert "CRMExport contacts" in terminal
    assert "450 of 450" in terminal and "records/s" in terminal and "completed" in terminal
    # Log lines print above the display, in the console format, not as JSON.
    assert "salesforce_login" in terminal and '"event"' not in terminal


def test_job_without_a_terminal_keeps_stderr_json(tmp_path: Path, sandbox: SandboxHandle) -> None:
    config = make_config(tmp_path, sandbox, rows=3)
    done = subprocess.run(
        [sys.executable, "-m", "crm_export", "job", "CRMExport", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SF_CLIENT_SECRET": sandbox.client_secret},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert all(line.startswith("{") for line in done.stderr.splitlines()), done.stderr
    assert "records/s" not in done.stderr


def status_config(tmp: Path, rows: int) -> Path:
    """A config whose org is never called: status and errors do not talk to Salesforce."""
    with sqlite3.connect(tmp / "app.db") as db:
        db.execute(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, last_name TEXT, updated_at TEXT)"
        )
        db.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?)",
            [
                (i, f"Last\t{i}", f"2026-01-01 {i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}")
                for i in range(1, rows + 1)
            ],
        )
    db.close()
    path = tmp / "crm-export.toml"
    path.write_text("""
[database]
url = "sqlite:///state.db"

[salesforce]
login_url = "https://login.example.test"
client_id = "unused"
client_secret_env = "SF_CLIENT_SECRET"

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
""")
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_export", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "SF_CLIENT_SECRET"},
        cwd=cwd,
    )


def a_run_in_progress(tmp: Path, done: int) -> int:
    """What the state database holds while CRMExport is ``done`` rows into the stream: the
    run's row, its counters and the position, as the runner commits them per batch."""
    from crm_export.ports import BatchAck, JobId, Position, RunCounts
    from crm_export.wiring import open_store

    with open_store(f"sqlite:///{tmp / 'state.db'}") as store:
        run_id = store.begin_run(JobId.EXPORT, "contacts")
        last = f"2026-01-01 {done // 3600:02d}:{done // 60 % 60:02d}:{done % 60:02d}"
        store.acknowledge(
            BatchAck(
                "contacts",
                run_id,
                position=Position(last, done),
                counts=RunCounts(read=done, exported=done),
            )
        )
        return run_id


def test_status_shows_how_far_a_running_stream_is(tmp_path: Path) -> None:
    config = status_config(tmp_path, rows=50_000)
    run_id = a_run_in_progress(tmp_path, done=12_200)
    shown = cli("status", "--config", str(config), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()[:2]
    assert header.split("\t")[:2] == ["stream", "state"]
    assert row.split("\t")[:2] == ["contacts", "running: 12,200 of 50,000"]

    as_json = json.loads(cli("status", "--json", "--config", str(config), cwd=tmp_path).stdout)
    running = as_json[0]["running"]
    assert (running["run_id"], running["done"], running["total"]) == (run_id, 12_200, 50_000)
    assert running["counts"]["exported"] == 12_200


def test_tables_are_tab_separated_without_a_terminal(tmp_path: Path) -> None:
    from crm_export.ports import BatchAck, RecordError, RecordFailure

    config = status_config(tmp_path, rows=3)
    run_id = a_run_in_progress(tmp_path, done=1)
    from crm_export.wiring import open_store

    message = "a long message " * 20 + "with\ta tab"
    with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.acknowledge(
            BatchAck(
                "contacts",
                run_id,
                failures=[
                    RecordFailure("2", "Contact", "2", RecordError("INVALID_X", message), None)
                ],
            )
        )
    shown = cli("errors", "--config", str(config), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 2  # one header, one row, however long the row
    assert lines[0].split("\t") == [
        "id",
        "stream",
        "record_key",
        "error_code",
        "error_message",
        "attempts",
        "first_failed_at",
        "last_failed_at",
    ]
    fields = lines[1].split("\t")
    assert fields[1:5] == ["contacts", "2", "INVALID_X", message.replace("\t", "\\t")]


def test_errors_for_an_unknown_stream_names_it_and_exits_2(tmp_path: Path) -> None:
    config = status_config(tmp_path, rows=3)
    a_run_in_progress(tmp_path, done=1)
    shown = cli("errors", "--stream", "nosuch", "--config", str(config), cwd=tmp_path)
    assert shown.returncode == 2
    assert shown.stdout == ""
    assert "errors --stream nosuch: no such stream" in shown.stderr
    assert "(streams: contacts)" in shown.stderr
    # A known stream with nothing open: a header only, for scripts.
    none = cli("errors", "--stream", "contacts", "--config", str(config), cwd=tmp_path)
    assert none.returncode == 0 and none.stdout.splitlines()[0].startswith("id\tstream")
    assert len(none.stdout.splitlines()) == 1
    # At a terminal, a sentence instead of an empty table.
    code, _, terminal = run_on_a_terminal(
        ["errors", "--stream", "contacts", "--config", str(config)], {}, tmp_path, stdout_too=True
    )
    assert code == 0 and terminal.strip() == "No open ExportErrors for stream contacts."
