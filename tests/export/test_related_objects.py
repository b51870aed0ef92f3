"""Related objects end to end: Contacts under Accounts, set through the parent's external ID,
parents before children, over real HTTPS against the sandbox org, on SQLite and PostgreSQL
state. The org resolves every lookup itself: the source has no Salesforce Id anywhere."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crm_export.config import Config, load_config
from crm_export.export import StreamResult
from crm_export.jobs import JOBS
from crm_export.ports import JobId, RunOutcome
from crm_export.sandbox.testing import SandboxHandle, running_sandbox

# A rule of the user's org that rejects an account, so that its children lose their parent.
REJECT_ACCOUNT = {
    "objects": {
        "Account": {
            "validation_rules": {
                "Name_Not_Rejected": {
                    "error_message": "Accounts named REJECTED are not accepted.",
                    "error_field": "Name",
                    "when": {"field": "Name", "op": "eq", "value": "REJECTED"},
                }
            }
        }
    }
}


class Related:
    """A source with accounts and contacts, a config that lists contacts FIRST (so the order
    must come from the lookup), a state database and the org."""

    def __init__(self, tmp_path: Path, sandbox: SandboxHandle, state_url: str) -> None:
        self.dir, self.sandbox, self.state_url = tmp_path, sandbox, state_url
        self.source = tmp_path / "app.db"
        self._tick = 0
        with sqlite3.connect(self.source) as db:
            db.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT, updated_at TEXT)")
            db.execute(
                "CREATE TABLE contacts (id INTEGER PRIMARY KEY, last_name TEXT, "
                "account_id TEXT, updated_at TEXT)"
            )
        db.close()

    def _at(self) -> str:
        self._tick += 1
        return f"2026-01-01 00:{self._tick // 60:02d}:{self._tick % 60:02d}"

    def execute(self, sql: str, **params: Any) -> None:
        with sqlite3.connect(self.source) as db:
            db.execute(sql, params)
        db.close()

    def account(self, key: str, name: str) -> None:
        self.execute(
            "INSERT OR REPLACE INTO accounts VALUES (:k, :n, :at)", k=key, n=name, at=self._at()
        )

    def contact(self, key: int, account: str | None, last_name: str = "Smith") -> None:
        self.execute(
            "INSERT OR REPLACE INTO contacts VALUES (:k, :n, :a, :at)",
            k=key,
            n=last_name,
            a=account,
            at=self._at(),
        )

    def config(self, pause_on_error: bool) -> Config:
        common = f"""
source_url = "sqlite:///{self.source}"
key = "id"
order_by = "updated_at"
external_id_field = "External_Id__c"
"""
        text = f"""
[database]
url = "{self.state_url}"

[salesforce]
login_url = "{self.sandbox.base_url}"
client_id = "{self.sandbox.client_id}"
client_secret_env = "SF_CLIENT_SECRET"
ca_bundle = "{self.sandbox.ca_path}"

[export]
pause_on_error = {str(pause_on_error).lower()}

[logging]
format = "json"

[[streams]]
name = "contacts"
table = "contacts"
sobject = "Contact"
{common}
[streams.fields]
LastName = "last_name"

[streams.lookups]
AccountId = {{ sobject = "Account", external_id_field = "External_Id__c", column = "account_id" }}

[[streams]]
name = "accounts"
table = "accounts"
sobject = "Account"
{common}
[streams.fields]
Name = "name"
"""
        path = self.dir / "crm-export.toml"
        path.write_text(text, encoding="utf-8")
        return load_config(path, {"SF_CLIENT_SECRET": self.sandbox.client_secret})

    def run(self, job: JobId = JobId.EXPORT, *, pause: bool = True) -> dict[str, StreamResult]:
        return {r.stream: r for r in JOBS[job](self.config(pause), None)}

    def account_ids(self) -> dict[str, str]:
        return {r["External_Id__c"]: r["Id"] for r in self.sandbox.records("Account")}

    def contacts(self) -> dict[str, dict[str, Any]]:
        return {r["External_Id__c"]: r for r in self.sandbox.records("Contact")}

    def open_errors(self) -> dict[tuple[str, str], str]:
        engine = sa.create_engine(self.state_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT stream, record_key, error_code FROM ExportErrors "
                        "WHERE resolved_at IS NULL"
                    )
                )
                return {(r[0], r[1]): r[2] for r in rows}
        finally:
            engine.dispose()


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(org=None) as handle:
        yield handle


@pytest.fixture
def related(tmp_path: Path, sandbox: SandboxHandle, state_url: str) -> Related:
    return Related(tmp_path, sandbox, state_url)


def test_children_ordered_before_their_parents_get_the_right_account(related: Related) -> None:
    # The children's rows come first in the source, and the contacts stream first in the file.
    related.contact(1, "A-1")
    related.contact(2, "A-2")
    related.contact(3, "A-1")
    related.account("A-1", "Acme")
    related.account("A-2", "Globex")

    results = related.run()

    assert {s: r.outcome for s, r in results.items()} == {
        "accounts": RunOutcome.COMPLETED,
        "contacts": RunOutcome.COMPLETED,
    }
    assert list(results) == ["accounts", "contacts"]  # parents first
    ids, contacts = related.account_ids(), related.contacts()
    assert {key: c["AccountId"] for key, c in contacts.items()} == {
        "1": ids["A-1"],
        "2": ids["A-2"],
        "3": ids["A-1"],
    }
    assert related.open_errors() == {}


def test_a_null_parent_column_clears_the_lookup(related: Related) -> None:
    related.account("A-1", "Acme")
    related.contact(1, "A-1")
    related.run()
    assert related.contacts()["1"]["AccountId"] == related.account_ids()["A-1"]

    related.contact(1, None)
    related.run()

    assert related.contacts()["1"]["AccountId"] is None


@pytest.mark.parametrize("pause", [True, False], ids=["pause", "skip"])
def test_children_of_a_rejected_parent_wait_for_it_and_go_with_it(
    related: Related, sandbox: SandboxHandle, pause: bool
) -> None:
    sandbox.set_org(patch=REJECT_ACCOUNT)
    related.account("A-1", "Acme")
    related.account("A-2", "REJECTED")
    related.contact(1, "A-1")
    related.contact(2, "A-2")
    related.contact(3, "A-1")

    first = related.run(pause=pause)

    errors = related.open_errors()
    assert errors[("accounts", "A-2")] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    # Salesforce's own record error for a parent it does not find: a record error, not a
    # configuration one, so the contacts stream did not fail.
    assert errors[("contacts", "2")] == "INVALID_FIELD"
    assert first["contacts"].outcome is (RunOutcome.PAUSED if pause else RunOutcome.COMPLETED)
    if pause:
        assert first["contacts"].paused is not None
        assert first["contacts"].paused.record_key == "2"
        assert "Foreign key external ID: A-2 not found" in first["contacts"].paused.error_message
        assert set(related.contacts()) == {"1"}  # nothing after the paused child
        status = _status(related, "--json")
        [contacts] = [s for s in status if s["stream"] == "contacts"]
        assert contacts["paused"]["waiting_for"] == {
            "sobject": "Account",
            "external_id_field": "External_Id__c",
            "external_id": "A-2",
            "streams": ["accounts"],
        }
        assert "waits for its parent Account External_Id__c = A-2" in _status(related)
    else:
        assert set(related.contacts()) == {"1", "3"}

    # The user fixes the parent; one re-export sends the parent, then its child.
    related.execute("UPDATE accounts SET name = 'Acme East' WHERE id = 'A-2'")
    again = related.run(JobId.REEXPORT, pause=pause)

    assert list(again) == ["accounts", "contacts"]
    assert related.open_errors() == {}
    ids = related.account_ids()
    assert related.contacts()["2"]["AccountId"] == ids["A-2"]
    if pause:
        # Released: the next run sends the child that waited behind it.
        assert related.run(pause=True)["contacts"].outcome is RunOutcome.COMPLETED
    assert {k: c["AccountId"] for k, c in related.contacts().items()} == {
        "1": ids["A-1"],
        "2": ids["A-2"],
        "3": ids["A-1"],
    }


def test_many_children_of_a_missing_parent_are_record_errors_not_a_flood(
    related: Related,
) -> None:
    for key in range(1, 61):  # more than max_identical_errors (50) in a row
        related.contact(key, "A-404")
    related.contact(61, None)

    results = related.run(pause=False)

    assert results["contacts"].outcome is RunOutcome.COMPLETED
    errors = related.open_errors()
    assert len(errors) == 60 and set(errors.values()) == {"INVALID_FIELD"}
    assert set(related.contacts()) == {"61"}


def _status(related: Related, *args: str) -> Any:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crm_export",
            "status",
            *args,
            "--config",
            str(related.dir / "crm-export.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "SF_CLIENT_SECRET"},
        check=True,
    )
    if "--json" in args:
        import json

        return json.loads(done.stdout)
    return done.stdout
