"""What the daemon and reliability tests and the benches share: a user's set-up, built for real.

A SQLite source table of contacts, a config file, the state database (SQLite or
PostgreSQL), the sandbox org (in-process, or as its own ``crm-export sandbox serve``
process), and ``crm-export`` run as a process. Nothing is mocked.

Imported as ``tests.harness``, by the tests and by ``bench/`` (which puts the repository root
on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from crm_export.sandbox.admin_client import AdminClient

REPO = Path(__file__).resolve().parents[1]
POSTGRES_ENV = "CRM_EXPORT_TEST_POSTGRES_URL"
SECRET_ENV = "SF_CLIENT_SECRET"
T0 = datetime(2026, 1, 1, tzinfo=UTC)

CONTACT_FIELDS: dict[str, str] = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "Email": "email",
    "Title": "title",
}

# The default org's rules that reject a contact, and the statusCode each gives. They rotate,
# so consecutive rejects never share (code, fields) and max_identical_errors never trips.
REJECTS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("email", {"email": "{key}@example.invalid"}, "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
    ("trigger", {"last_name": "TriggerFail"}, "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY"),
    ("title", {"title": "DO NOT EXPORT"}, "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
)


# -- the source --------------------------------------------------------------------------------


@dataclass
class ContactSet:
    """Source rows plus what the org will do with each: accept, or reject with a code."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # key -> expected statusCode

    @property
    def accepted(self) -> set[str]:
        return {str(r["id"]) for r in self.rows} - set(self.rejected)


def order_value(i: int) -> str:
    return (T0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")


def contact_rows(keys: range, reject_every: int = 0, *, offset: int = 0) -> ContactSet:
    """Contacts for ``keys``; every ``reject_every``-th one (0: none) breaks an org rule."""
    out = ContactSet()
    kinds = 0
    for key in keys:
        row: dict[str, Any] = {
            "id": key,
            "first_name": f"F{key}",
            "last_name": f"Last{key}",
            "email": f"c{key}@acme.test",
            "title": None,
            "updated_at": order_value(key + offset),
        }
        if reject_every and key % reject_every == 0:
            _, change, code = REJECTS[kinds % len(REJECTS)]
            kinds += 1
            row.update({k: v.format(key=key) for k, v in change.items()})
            out.rejected[str(key)] = code
        out.rows.append(row)
    return out


CONTACTS_DDL = (
    "CREATE TABLE IF NOT EXISTS {name} (id INTEGER PRIMARY KEY, first_name TEXT, "
    "last_name TEXT, email TEXT, title TEXT, updated_at TEXT NOT NULL)"
)
# The index a user is told to create (README, production): the export reads (updated_at, id).
CONTACTS_INDEX_DDL = "CREATE INDEX IF NOT EXISTS ix_{name}_updated_at_id ON {name} (updated_at, id)"


def write_contacts(
    path: Path, rows: Sequence[Mapping[str, Any]], table: str = "contacts", *, index: bool = True
) -> None:
    """Create (if needed) a contacts table in the SQLite file ``path``, with the (updated_at,
    id) index unless ``index`` is false, and insert ``rows``."""
    with sqlite3.connect(path) as db:
        db.execute(CONTACTS_DDL.format(name=table))
        if index:
            db.execute(CONTACTS_INDEX_DDL.format(name=table))
        db.executemany(
            f"INSERT INTO {table} (id, first_name, last_name, email, title, updated_at) "
            "VALUES (:id, :first_name, :last_name, :email, :title, :updated_at)",
            [dict(r) for r in rows],
        )
    # sqlite3's context manager commits but does not close.
    db.close()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# -- the config --------------------------------------------------------------------------------


@dataclass
class Stream:
    name: str
    source_url: str
    table: str | None = "contacts"
    query: str | None = None
    key: str = "id"
    order_by: str = "updated_at"
    sobject: str = "Contact"
    external_id_field: str = "External_Id__c"
    pause_on_error: bool | None = None
    fields: Mapping[str, str] = field(default_factory=lambda: dict(CONTACT_FIELDS))

    def toml(self) -> str:
        lines = ["[[streams]]", f"name = {_q(self.name)}"]
        if self.query is not None:
            lines.append(f"query = {_q(self.query)}")
        else:
            lines.append(f"table = {_q(self.table or '')}")
        lines += [
            f"source_url = {_q(self.source_url)}",
            f"key = {_q(self.key)}",
            f"order_by = {_q(self.order_by)}",
            f"sobject = {_q(self.sobject)}",
            f"external_id_field = {_q(self.external_id_field)}",
        ]
        if self.pause_on_error is not None:
            lines.append(f"pause_on_error = {str(self.pause_on_error).lower()}")
        lines.append("[streams.fields]")
        lines += [f"{k} = {_q(v)}" for k, v in self.fields.items()]
        return "\n".join(lines)


@dataclass
class Org:
    """Where a sandbox org is and who logs in to it."""

    base_url: str
    ca_path: str
    client_id: str = "crm-export-sandbox"
    client_secret: str = "sandbox-secret"

    def admin(self) -> AdminClient:
        return AdminClient(self.base_url, self.ca_path)


FAST_RETRY: dict[str, float] = {
    "max_attempts": 8,
    "max_elapsed_seconds": 20,
    "initial_backoff_seconds": 0.05,
    "max_backoff_seconds": 0.5,
}


def split_streams(source_url: str, count: int) -> list[Stream]:
    """The contacts table as ``count`` streams side by side, each its share of the keys
    (``id % count``): one stream, "contacts", when ``count`` is 1. Same table, same object,
    disjoint records: every check on the org's contacts holds for all of them together."""
    if count <= 1:
        return [Stream("contacts", source_url)]
    return [
        Stream(
            "contacts" if i == 0 else f"contacts_{i + 1}",
            source_url,
            table=None,
            query=f"SELECT * FROM contacts WHERE id % {count} = {i}",
        )
        for i in range(count)
    ]


def write_config(
    path: Path,
    *,
    state_url: str,
    org: Org,
    streams: Sequence[Stream],
    pause_on_error: bool = True,
    batch_size: int = 200,
    retry: Mapping[str, float] = FAST_RETRY,
    timeout_seconds: float = 10,
    record_retry_attempts: int = 5,
    max_identical_errors: int = 50,
    log_level: str = "info",
    export_lines: str = "",
) -> Path:
    """Write a crm-export config file; the client secret is read from $SF_CLIENT_SECRET."""
    retry_lines = "\n".join(f"{k} = {v}" for k, v in retry.items())
    text = f"""
[database]
url = {_q(state_url)}

[salesforce]
login_url = {_q(org.base_url)}
auth = "client_credentials"
client_id = {_q(org.client_id)}
client_secret_env = "{SECRET_ENV}"
api_version = "64.0"
ca_bundle = {_q(org.ca_path)}
timeout_seconds = {timeout_seconds}

[retry]
{retry_lines}

[export]
pause_on_error = {str(pause_on_error).lower()}
batch_size = {batch_size}
record_retry_attempts = {record_retry_attempts}
max_identical_errors = {max_identical_errors}
{export_lines}

[logging]
format = "json"
level = {_q(log_level)}

""" + "\n\n".join(s.toml() for s in streams)
    path.write_text(text, encoding="utf-8")
    return path


def _q(text: str) -> str:
    """A TOML basic string (json.dumps escapes exactly what TOML needs here)."""
    return json.dumps(text)


# -- running crm-export ------------------------------------------------------------------------


def crm_export_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "crm_export", *args]


def job_env(secret: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_EXPORT_CONFIG")}
    env[SECRET_ENV] = secret
    env.update(extra)
    return env


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``crm-export ARGS`` to completion, capturing stdout and stderr."""
    return subprocess.run(
        crm_export_command(*args),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


# -- the state database ------------------------------------------------------------------------


def sql(url: str, query: str, **params: Any) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(query), params)]
    finally:
        engine.dispose()


@contextmanager
def postgres_database(server_url: str, name: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on ``server_url``'s server; dropped on exit."""
    base = make_url(server_url)
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote(name)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        admin.dispose()


# -- the sandbox org as its own process --------------------------------------------------------


def _read_state_file(path: Path) -> dict[str, Any] | None:
    """The sandbox's state file, or None until it exists and is complete: the sandbox
    creates it, then writes it, and a poll can fall in between."""
    try:
        info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return info


class SandboxProcess:
    """``crm-export sandbox serve`` in a child process, so it outlives killed exporters."""

    def __init__(
        self,
        workdir: Path,
        *,
        data: Path | None = None,
        faults: Mapping[str, Any] | None = None,
        seed: int = 0,
        org_file: Path | None = None,
    ) -> None:
        self.state_dir = workdir / "sandbox-state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "sandbox.log"
        args = ["sandbox", "serve", "--port", "0", "--state-dir", str(self.state_dir)]
        args += ["--seed", str(seed)]
        if data is not None:
            args += ["--data", str(data)]
        if faults:
            args += ["--faults", json.dumps(dict(faults))]
        if org_file is not None:
            args += ["--org", str(org_file)]
        state_file = self.state_dir / "sandbox.json"
        state_file.unlink(missing_ok=True)
        self._log = self.log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            crm_export_command(*args), stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while (info := _read_state_file(state_file)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the sandbox did not start: {self.log_path.read_text(encoding='utf-8')}"
                )
            time.sleep(0.05)
        self.org = Org(info["base_url"], info["ca_path"])
        self.admin = self.org.admin()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
