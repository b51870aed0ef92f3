"""Acting on one record, and on one stream, as users do: real subprocesses, real files,
the sandbox org over HTTPS. ``errors skip`` and ``stream reset`` go through while a runner
is active (a run in flight stops instead of undoing them); ``errors retry`` is a run and
waits for the runner lock."""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from crm_export.store import runner_lock
from tests.test_cli import crm_export, make_config


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


class Setup:
    def __init__(self, tmp: Path, sandbox: SandboxHandle, pause: bool = True) -> None:
        self.dir, self.sandbox = tmp, sandbox
        self.config = make_config(tmp, sandbox)
        if not pause:
            text = self.config.read_text().replace(
                "[logging]", "[export]\npause_on_error = false\n\n[logging]"
            )
            self.config.write_text(text)
        self.env = {"SF_CLIENT_SECRET": sandbox.client_secret}

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if stdin is None:
            return crm_export(*args, "--config", str(self.config), env=self.env, cwd=self.dir)
        return subprocess.run(
            [sys.executable, "-m", "crm_export", *args, "--config", str(self.config)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env},
            cwd=self.dir,
        )

    def sql(self, query: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.dir / "state.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(query)]

    def error_id(self, key: str) -> str:
        [row] = self.sql(f"SELECT id FROM exporterrors WHERE record_key = '{key}'")
        return str(row["id"])

    def source(self, query: str, *params: Any) -> None:
        with sqlite3.connect(self.dir / "app.db") as db:
            db.execute(query, params)

    def written(self) -> list[str]:
        return [w["external_id"] for w in self.sandbox.writes()]

    def refused(self, key: str) -> int:
        return sum(1 for r in self.sandbox.rejections() if r.get("external_id") == key)


def test_skip_releases_the_pause_and_the_stream_steps_over_the_record(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    s = Setup(tmp_path, sandbox)
    assert s.cli("job", "CRMExport").returncode == 0  # paused at 2 (not-an-email)
    error = s.error_id("2")

    done = s.cli("errors", "skip", error, "--reason", "test data from the old CRM")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"skipped {error} (contacts, record 2, INVALID_EMAIL_ADDRESS)" in done.stdout
    assert "contacts: was paused at record 2: released; the next run goes on after it" in (
        done.stdout
    )
    [row] = s.sql(f"SELECT * FROM exporterrors WHERE id = {error}")
    assert (row["status"], row["closed_by"], row["close_reason"]) == (
        "skipped",
        getpass.getuser(),
        "test data from the old CRM",
    )
    assert row["resolved_at"] is not None
    [action] = s.sql("SELECT * FROM operator_actions")
    assert (action["action"], action["actor"], action["error_ids"]) == (
        "errors_skip",
        getpass.getuser(),
        error,
    )
    logged = [json.loads(line) for line in done.stderr.splitlines() if "operator_action" in line]
    assert logged and logged[0]["action"] == "errors_skip" and logged[0]["ids"] == [int(error)]

    refused = s.refused("2")
    job = s.cli("job", "CRMExport")
    assert job.returncode == 0 and "CRMExport contacts: completed" in job.stdout
    assert s.written() == ["1", "3"]  # 3 went out; 2 was stepped over, not sent again
    # The daily re-export does not retry a skipped record either.
    assert s.cli("job", "CRMExport_ExportError").returncode == 0
    assert s.refused("2") == refused
    again = s.cli("errors", "skip", error, "999")
    assert again.returncode == 1
    assert "already closed (skipped); nothing done" in again.stdout
    assert "999: no such ExportErrors row" in again.stderr


def test_skip_goes_through_while_a_runner_holds_the_lock_and_retry_waits_for_it(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    s = Setup(tmp_path, sandbox, pause=False)
    assert s.cli("job", "CRMExport").returncode == 0
    error = s.error_id("2")
    lock = runner_lock(f"sqlite:///{tmp_path / 'state.db'}")
    assert lock.acquire()  # as the daemon holds it, for its whole life
    try:
        retry = s.cli("errors", "retry", error)
        assert retry.returncode == 1
        assert "another runner is active" in retry.stderr and "--wait" in retry.stderr
        assert s.sql("SELECT * FROM operator_actions") == []
        skip = s.cli("errors", "skip", error)
        assert skip.returncode == 0, skip.stderr
    finally:
        lock.release()
    assert s.sql(f"SELECT status FROM exporterrors WHERE id = {error}") == [{"status": "skipped"}]


def test_retry_re_exports_the_records_now_and_prints_each_outcome(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    s = Setup(tmp_path, sandbox, pause=False)
    s.source("INSERT INTO contacts VALUES (4, 'Knuth', 'also-bad', '2026-01-01 00:00:04')")
    assert s.cli("job", "CRMExport").returncode == 0
    two, four = s.error_id("2"), s.error_id("4")
    s.source("UPDATE contacts SET email = 'grace@acme.test' WHERE id = 2")

    done = s.cli("errors", "retry", "--code", "INVALID_EMAIL_ADDRESS", "--reason", "fixed 2")
    assert done.returncode == 1, done.stdout + done.stderr  # 4 is still bad
    assert f"{two} (contacts, record 2, INVALID_EMAIL_ADDRESS): exported (resolved)" in done.stdout
    assert (
        f"{four} (contacts, record 4, INVALID_EMAIL_ADDRESS): failed again: "
        "INVALID_EMAIL_ADDRESS: Email: invalid email address: also-bad"
    ) in done.stdout
    assert sandbox.records("Contact")[-1]["Email"] == "grace@acme.test"
    [run] = s.sql("SELECT job_id, outcome FROM export_runs ORDER BY id DESC LIMIT 1")
    assert run == {"job_id": "CRMExport_ExportError", "outcome": "completed"}
    [action] = s.sql("SELECT * FROM operator_actions")
    assert (action["action"], action["reason"]) == ("errors_retry", "fixed 2")
    assert json.loads(action["detail"])["outcomes"] == {two: "exported", four: "failed"}

    s.source("UPDATE contacts SET email = 'don@acme.test' WHERE id = 4")
    again = s.cli("errors", "retry", four, two)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{two} (contacts, record 2, INVALID_EMAIL_ADDRESS): not open (resolved)" in (
        again.stdout
    )
    assert s.cli("errors", "retry").returncode == 2  # nothing named


def test_reset_asks_then_re_exports_the_stream_from_the_start(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    s = Setup(tmp_path, sandbox, pause=False)
    assert s.cli("job", "CRMExport").returncode == 0
    assert s.written() == ["1", "3"]

    no = s.cli("stream", "reset", "contacts", "--to-start", stdin="no\n")
    assert no.returncode == 1 and "aborted; nothing changed" in no.stdout
    assert "sends all 3 source rows again; 1 open ExportErrors rows stay open" in no.stdout
    assert s.sql("SELECT position_key FROM stream_state") == [
        {"position_key": '{"type": "int", "value": 3}'}
    ]

    yes = s.cli("stream", "reset", "contacts", "--to-start", stdin="yes\n")
    assert yes.returncode == 0, yes.stderr
    assert s.sql("SELECT position_key FROM stream_state") == [{"position_key": None}]
    again = s.cli("job", "CRMExport")
    assert again.returncode == 0
    # Every row read again from the start; the two Salesforce holds as they are cost no
    # call (change detection), the one with an open error is sent again.
    assert "read 3 = exported 0 + unchanged 2 + failed 1" in again.stdout
    assert s.written() == ["1", "3"]
    # To send them all regardless, resync (audited too).
    assert s.cli("stream", "resync", "contacts").returncode == 0
    assert s.cli("job", "CRMExport").returncode == 0
    assert s.written() == ["1", "3", "1", "3"]  # sent again, as updates: nothing duplicated
    assert len(sandbox.records("Contact")) == 2
    assert s.cli("stream", "reset", "contacts", "--to-start", "--yes").returncode == 0
    assert [a["action"] for a in s.sql("SELECT action FROM operator_actions ORDER BY id")] == [
        "stream_reset",
        "stream_resync",
        "stream_reset",
    ]
    unknown = s.cli("stream", "reset", "nosuch", "--to-start", "--yes")
    assert unknown.returncode == 2 and "no stream named 'nosuch'" in unknown.stderr


def test_a_skip_during_a_run_in_flight_stops_the_run_instead_of_being_undone(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    s = Setup(tmp_path, sandbox)
    assert s.cli("job", "CRMExport").returncode == 0  # paused at 2
    error = s.error_id("2")
    # Every upsert now takes 4 s: the next run retries record 2 slowly, and the skip (a
    # process of its own, about a second) commits while that call is in flight.
    sandbox.set_faults(latency_ms=4000, paths="composite")
    job = subprocess.Popen(
        [sys.executable, "-m", "crm_export", "job", "CRMExport", "--config", str(s.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **s.env},
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 20
        while sandbox.counters()["faults"].get("latency", 0) == 0:  # the retry is in flight
            assert time.monotonic() < deadline and job.poll() is None
            time.sleep(0.05)
        skip = s.cli("errors", "skip", error)
        assert skip.returncode == 0, skip.stderr
        out, _ = job.communicate(timeout=30)
    finally:
        job.kill()
    assert job.returncode == 1
    assert "changed by an operator" in out
    # The skip holds: no new open row, no pause; the next run goes on after record 2.
    sandbox.clear_faults()
    assert s.sql("SELECT status FROM exporterrors") == [{"status": "skipped"}]
    assert s.sql("SELECT paused_record_key FROM stream_state") == [{"paused_record_key": None}]
    assert s.cli("job", "CRMExport").returncode == 0
    assert s.written() == ["1", "3"]
