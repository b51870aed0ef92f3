"""A user's set-up, for real: a SQLite source table, a config file, the state database (SQLite
and PostgreSQL) and the sandbox org over verified HTTPS. Nothing is mocked."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crm_export.config import Config, load_config
from crm_export.export import StreamResult
from crm_export.jobs import JOBS
from crm_export.ports import JobId
from crm_export.sandbox.testing import SandboxHandle

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Scenario:
    """What a user has: a source table, a config, a state database and an org."""

    def __init__(self, tmp_path: Path, sandbox: SandboxHandle, state_url: str) -> None:
        self.dir = tmp_path
        self.sandbox = sandbox
        self.state_url = state_url
        self.source = tmp_path / "app.db"
        self._tick = 0
        with sqlite3.connect(self.source) as db:
            db.execute(
                "CREATE TABLE contacts (id INTEGER PRIMARY KEY, first_name TEXT, "
                "last_name TEXT, email TEXT, title TEXT, birthdate TEXT, "
                "updated_at TEXT NOT NULL)"
            )
        self.settings: dict[str, Any] = {
            "pause_on_error": True,
            "batch_size": 200,
            "fields": {
                "FirstName": "first_name",
                "LastName": "last_name",
                "Email": "email",
                "Title": "title",
            },
            "retry": {
                "max_attempts": 6,
                "max_elapsed_seconds": 5,
                "initial_backoff_seconds": 0.01,
                "max_backoff_seconds": 0.05,
            },
            "timeout_seconds": 5,
            "record_retry_attempts": 5,
            "max_identical_errors": 50,
            "client_secret": sandbox.client_secret,
            # Extra lines for [salesforce] and for the stream (issue 13's keys, say).
            "salesforce_lines": "",
            "stream_lines": "",
            # Extra lines for [export] (issue 11's bulk_* keys, max_in_flight, say).
            "export_lines": "",
        }

    # -- the source table ---------------------------------------------------------------
    def _now(self) -> str:
        self._tick += 1
        return (T0 + timedelta(seconds=self._tick)).strftime("%Y-%m-%d %H:%M:%S")

    def add(self, key: int, last_name: str = "Smith", **values: Any) -> None:
        row = {
            "id": key,
            "last_name": last_name,
            "first_name": f"F{key}",
            "email": f"c{key}@acme.test",
            "title": None,
            "birthdate": None,
            **values,
        }
        with sqlite3.connect(self.source) as db:
            db.execute(
                "INSERT INTO contacts (id, first_name, last_name, email, title, birthdate, "
                "updated_at) VALUES (:id, :first_name, :last_name, :email, :title, :birthdate, "
                ":at)",
                {**row, "at": self._now()},
            )

    def add_many(self, keys: range, **values: Any) -> None:
        if len(keys) <= 100:
            for key in keys:
                self.add(key, **values)
            return
        # One transaction for a large table (the rows still get one second each).
        rows = []
        for key in keys:
            row = {"first_name": f"F{key}", "email": f"c{key}@acme.test", "title": None}
            rows.append({**row, "birthdate": None, "last_name": "Smith", **values, "id": key})
            rows[-1]["at"] = self._now()
        with sqlite3.connect(self.source) as db:
            db.executemany(
                "INSERT INTO contacts (id, first_name, last_name, email, title, birthdate, "
                "updated_at) VALUES (:id, :first_name, :last_name, :email, :title, :birthdate, "
                ":at)",
                rows,
            )

    def touch_all(self) -> None:
        """What a trigger-happy app does: bump updated_at of every row, changing nothing."""
        with sqlite3.connect(self.source) as db:
            keys = [k for (k,) in db.execute("SELECT id FROM contacts ORDER BY id")]
            db.executemany(
                "UPDATE contacts SET updated_at = ? WHERE id = ?",
                [(self._now(), key) for key in keys],
            )

    def update(self, key: int, **values: Any) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in values)
        with sqlite3.connect(self.source) as db:
            db.execute(
                f"UPDATE contacts SET {sets}, updated_at = :at WHERE id = :id",
                {**values, "at": self._now(), "id": key},
            )

    def delete(self, key: int) -> None:
        with sqlite3.connect(self.source) as db:
            db.execute("DELETE FROM contacts WHERE id = ?", (key,))

    # -- the config file ----------------------------------------------------------------
    def config(self, **changes: Any) -> Config:
        s = {**self.settings, **changes}
        fields = "\n".join(f'{k} = "{v}"' for k, v in s["fields"].items())
        retry = "\n".join(f"{k} = {v}" for k, v in s["retry"].items())
        text = f"""
[database]
url = "{self.state_url}"

[salesforce]
login_url = "{self.sandbox.base_url}"
auth = "client_credentials"
client_id = "{self.sandbox.client_id}"
client_secret_env = "SF_CLIENT_SECRET"
api_version = "64.0"
ca_bundle = "{self.sandbox.ca_path}"
timeout_seconds = {s["timeout_seconds"]}
{s["salesforce_lines"]}

[retry]
{retry}

[export]
pause_on_error = {str(s["pause_on_error"]).lower()}
batch_size = {s["batch_size"]}
record_retry_attempts = {s["record_retry_attempts"]}
max_identical_errors = {s["max_identical_errors"]}
{s["export_lines"]}

[logging]
format = "json"

[[streams]]
name = "contacts"
table = "contacts"
source_url = "sqlite:///{self.source}"
key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"
{s["stream_lines"]}

[streams.fields]
{fields}
"""
        path = self.dir / "crm-export.toml"
        path.write_text(text)
        return load_config(path, environ={"SF_CLIENT_SECRET": s["client_secret"]})

    # -- running and looking --------------------------------------------------------------
    def run(self, job: str = "CRMExport", **changes: Any) -> StreamResult:
        [result] = JOBS[JobId(job)](self.config(**changes), None)
        return result

    def sql(self, query: str) -> list[dict[str, Any]]:
        engine = sa.create_engine(self.state_url)
        try:
            with engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(sa.text(query))]
        finally:
            engine.dispose()

    def export_errors(self) -> list[dict[str, Any]]:
        """What a user types first."""
        return self.sql(
            "SELECT stream, record_key, error_code, attempts, resolved_at, status "
            "FROM ExportErrors ORDER BY id"
        )

    def open_errors(self) -> dict[str, tuple[str, int]]:
        return {
            e["record_key"]: (e["error_code"], e["attempts"])
            for e in self.export_errors()
            if e["resolved_at"] is None
        }

    def contacts(self) -> dict[str, dict[str, Any]]:
        return {r["External_Id__c"]: r for r in self.sandbox.records("Contact")}

    def written(self) -> list[str]:
        """External IDs in the order the org wrote them (its own write log)."""
        return [w["external_id"] for w in self.sandbox.writes() if w["sobject"] == "Contact"]
