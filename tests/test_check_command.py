"""``crm-export check`` as users run it: a real subprocess, real files, the sandbox org over
HTTPS. It reports what the org would refuse, naming the key, and writes nothing anywhere."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_export.cli.check_commands import check_stream
from crm_export.export import StreamPlan
from crm_export.mapping import FieldMap, Lookup
from crm_export.ports import FieldDescribe, SourceRow, StreamSource
from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from crm_export.testing import InMemorySink, describe_of
from tests.test_cli import crm_export, make_config


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


def env(sandbox: SandboxHandle) -> dict[str, str]:
    return {"SF_CLIENT_SECRET": sandbox.client_secret}


def nothing_written(sandbox: SandboxHandle) -> None:
    assert sandbox.writes() == [] and sandbox.rejections() == []
    calls = sandbox.counters()["calls"]
    assert not any("upsert" in name or "create" in name for name in calls), calls


def test_a_clean_config_exits_0_and_touches_no_state_database(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox)
    done = crm_export("check", "--config", str(config), env=env(sandbox))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("crm-export check: 1 stream, no problems")
    assert "contacts -> Contact: 3 rows read, no problems" in done.stdout
    # Email syntax is a rule describe does not state: "not-an-email" is left to the org.
    nothing_written(sandbox)
    assert sandbox.counters()["calls"].get("describe") == 1
    assert not (tmp_path / "state.db").exists()


def test_check_prints_the_index_a_source_table_lacks_without_failing(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox)
    done = crm_export("check", "--config", str(config), "--json", env=env(sandbox))
    assert done.returncode == 0, done.stdout + done.stderr  # a note, not a problem
    [stream] = json.loads(done.stdout)["streams"]
    statement = stream["missing_index"]
    assert statement.startswith("CREATE INDEX") and "ON contacts (updated_at, id)" in statement
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute(statement)
    db.close()
    done = crm_export("check", "--config", str(config), env=env(sandbox))
    assert done.returncode == 0 and "CREATE INDEX" not in done.stdout, done.stdout


def test_problems_are_reported_by_stream_and_key_and_exit_1(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox)
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute(
            "INSERT INTO contacts VALUES (4, ?, 'x@acme.test', '2026-01-01 00:00:04')",
            ("L" * 81,),
        )
        db.execute("INSERT INTO contacts VALUES (5, NULL, 'y@acme.test', '2026-01-01 00:00:05')")
    text = config.read_text().replace(
        'Email = "email"\n',
        'Email = "email"\nLeadSource = "email"\nShoe_Size__c = "email"\nLifetime_Value__c = "id"\n',
    )
    text += """
[[streams]]
name = "deals"
table = "contacts"
source_url = "sqlite:///app.db"
key = "id"
order_by = "updated_at"
sobject = "Opportunity"
external_id_field = "Name"

[streams.fields]
Amount = "id"
"""
    config.write_text(text)
    # The state database exists: check must leave it exactly as it was.
    assert crm_export("db", "upgrade", "--config", str(config), env=env(sandbox)).returncode == 0
    before = hashlib.sha256((tmp_path / "state.db").read_bytes()).hexdigest()

    done = crm_export("check", "--config", str(config), "--json", env=env(sandbox))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    contacts, deals = report["streams"]
    found = {(p["key"], p["code"]): p for p in contacts["problems"]}
    c = 'streams[0] ("contacts")'
    assert set(found) == {
        (f"{c}.fields.Shoe_Size__c", "NO_SUCH_FIELD"),
        (f"{c}.fields.Lifetime_Value__c", "NOT_WRITABLE"),
        (f"{c}.fields.LeadSource", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
        (f"{c}.fields.LastName", "STRING_TOO_LONG"),
        (f"{c}.fields.LastName", "REQUIRED_FIELD_MISSING"),
    }
    picklist = found[(f"{c}.fields.LeadSource", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")]
    assert (picklist["rows"], picklist["record_keys"]) == (5, ["1", "2", "3", "4", "5"])
    too_long = found[(f"{c}.fields.LastName", "STRING_TOO_LONG")]
    assert (too_long["rows"], too_long["record_keys"]) == (1, ["4"])
    assert contacts["rows_read"] == 5
    d = 'streams[1] ("deals")'
    assert {(p["key"], p["code"]) for p in deals["problems"]} == {
        (f"{d}.external_id_field", "NOT_EXTERNAL_ID"),
        (f"{d}.fields", "REQUIRED_NOT_MAPPED"),
    }
    [required] = [p for p in deals["problems"] if p["code"] == "REQUIRED_NOT_MAPPED"]
    assert "StageName, CloseDate" in required["message"]

    text_report = crm_export("check", "--config", str(config), "--rows", "2", env=env(sandbox))
    assert text_report.returncode == 1
    assert "contacts -> Contact: 2 rows read:" in text_report.stdout
    assert (
        f"  {c}.fields.LeadSource: INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST in 2 of 2 rows "
        "(keys 1, 2): Lead Source: bad value for restricted picklist field: ada@acme.test"
    ) in text_report.stdout
    nothing_written(sandbox)
    assert hashlib.sha256((tmp_path / "state.db").read_bytes()).hexdigest() == before


def test_a_bad_config_exits_2(tmp_path: Path, sandbox: SandboxHandle) -> None:
    config = make_config(tmp_path, sandbox)
    unknown = crm_export("check", "--config", str(config), "--stream", "nosuch", env=env(sandbox))
    assert unknown.returncode == 2 and "no stream named 'nosuch'" in unknown.stderr
    config.write_text(config.read_text().replace('table = "contacts"', 'table = "contactz"'))
    missing = crm_export("check", "--config", str(config), env=env(sandbox))
    assert missing.returncode == 2 and 'streams[0] ("contacts").table' in missing.stderr
    nothing_written(sandbox)


def test_lookups_are_checked_against_the_parent_s_describe() -> None:
    contact = describe_of(
        "Contact",
        FieldDescribe("LastName", "string", length=80),
        FieldDescribe("External_Id__c", "string", external_id=True, unique=True),
        FieldDescribe(
            "AccountId", "reference", reference_to=("Account",), relationship_name="Account"
        ),
    )
    account = describe_of(
        "Account",
        FieldDescribe("Name", "string", length=255),
        FieldDescribe("External_Id__c", "string", external_id=True, unique=True),
    )
    sink = InMemorySink(describes=[contact, account])
    lookup = Lookup.derive("AccountId", "Account", "Name", "account_name")
    fmap = FieldMap("Contact", "External_Id__c", "id", (("LastName", "n"),), (lookup,))
    plan = StreamPlan(
        "contacts",
        fmap,
        StreamSource("contacts", "id", "at", fmap.columns, "sqlite://", "c"),
        pause_on_error=True,
        config_path='streams[0] ("contacts")',
    )
    rows = iter([SourceRow(1, 1, {"n": "Ada", "account_name": "Acme"})])
    report = check_stream(plan, sink, rows)
    assert [(f.key, f.code) for f in report.problems] == [
        ('streams[0] ("contacts").lookups.AccountId.external_id_field', "NOT_EXTERNAL_ID")
    ]
    assert sink.described == ["Contact", "Account"] and sink.requests == []


def test_job_fails_a_stream_mapping_a_missing_field_with_exit_2_before_sending(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    config = make_config(tmp_path, sandbox)
    config.write_text(config.read_text().replace('Email = "email"', 'Emial = "email"'))
    done = crm_export("job", "CRMExport", "--config", str(config), env=env(sandbox))
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'streams[0] ("contacts").fields.Emial: Contact has no field Emial' in done.stdout
    nothing_written(sandbox)
