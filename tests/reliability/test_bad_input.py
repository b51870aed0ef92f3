"""Bad source rows (issue 5 §5): each gets a clear answer, none crashes a run or blocks the
other streams, and nothing is lost.

``crm-export job`` runs as a process against the sandbox org over real HTTPS, reading real
SQLite source files (and a PostgreSQL source for the types only PostgreSQL has), with the
state database on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.harness import (
    Org,
    Stream,
    contact_rows,
    job_env,
    order_value,
    run_cli,
    sql,
    sqlite_url,
    write_config,
    write_contacts,
)

# Every Contact field of the default org the bad rows aim at, by type: string (40 and 80
# characters), textarea (32,000), date, boolean, phone.
PEOPLE_FIELDS = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "Title": "title",
    "Description": "description",
    "Birthdate": "birthdate",
    "HasOptedOutOfEmail": "opted_out",
    "Phone": "phone",
}
# No column types: SQLite then keeps each value exactly as written (a number stays a
# number in a text column, bytes stay bytes), as a hand-fed table does. No primary key: a
# real table can hold a NULL or repeated key when nothing forbids it.
PEOPLE_DDL = (
    "CREATE TABLE people (id, first_name, last_name, title, description, birthdate, "
    "opted_out, phone, updated_at)"
)


def person(key: Any, i: int, **values: Any) -> dict[str, Any]:
    row = {
        "id": key,
        "first_name": f"P{i}",
        "last_name": f"Person{i}",
        "title": None,
        "description": None,
        "birthdate": None,
        "opted_out": None,
        "phone": None,
        "updated_at": order_value(i),
    }
    row.update(values)
    return row


# (row, then what must happen to it): a code and the words that name its field or column,
# or "exported" with what the org must hold.
BAD_ROWS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (person(1, 1), {"exported": {"LastName": "Person1"}}),
    (
        person(None, 2),
        {
            "key": f"(id is NULL; updated_at = {order_value(2)})",
            "code": "CRM_EXPORT_NULL_KEY",
            "words": "key column 'id' is NULL",
        },
    ),
    (person("None", 3), {"exported": {"LastName": "Person3"}}),
    (
        person(4, 4, last_name="L" * 81),
        {"code": "STRING_TOO_LONG", "fields": "LastName", "words": "max length=80"},
    ),
    (
        person(5, 5, description="D" * 2_000_000),
        {
            "code": "CRM_EXPORT_INVALID_VALUE",
            "fields": "Description",
            "words": "column 'description' (-> Description): text of 2000000 characters",
        },
    ),
    (
        person(6, 6, title=b"caf\xe9 au lait"),  # Latin-1 bytes in a text column
        {
            "code": "CRM_EXPORT_INVALID_VALUE",
            "fields": "Title",
            "words": "column 'title' (-> Title): text is not valid UTF-8 (byte 3)",
        },
    ),
    (person(7, 7, title="caf\u00e9".encode()), {"exported": {"Title": "caf\u00e9"}}),
    (
        person(8, 8, phone=float("inf")),
        {
            "code": "CRM_EXPORT_INVALID_VALUE",
            "fields": "Phone",
            "words": "column 'phone' (-> Phone): inf is not a number Salesforce can store",
        },
    ),
    (
        person(9, 9, phone=float("-inf")),
        {"code": "CRM_EXPORT_INVALID_VALUE", "fields": "Phone", "words": "-inf is not a number"},
    ),
    # Values the org's JSON parser cannot read. Text a date or a checkbox cannot read at all
    # is caught before sending (describe gives the field's type), under the org's code,
    # naming the field; the rest the org refuses whole, and crm-export finds the record (Salesforce
    # names no field, only the type and the value).
    (
        person(10, 10, birthdate="next tuesday"),
        {
            "code": "JSON_PARSER_ERROR",
            "fields": "Birthdate",
            "words": "Cannot deserialize instance of date from VALUE_STRING value next tuesday",
        },
    ),
    (
        person(11, 11, birthdate=20260101),
        {
            "code": "JSON_PARSER_ERROR",
            "fields": None,
            "words": "date from VALUE_NUMBER_INT value 20260101",
        },
    ),
    (
        person(12, 12, opted_out="maybe"),
        {
            "code": "JSON_PARSER_ERROR",
            "fields": "HasOptedOutOfEmail",
            "words": "boolean from VALUE_STRING value maybe",
        },
    ),
    # A number where the org wants text is its text.
    (person(13, 13, last_name=12345), {"exported": {"LastName": "12345"}}),
    (
        person(14, 14, title="a\x00b"),
        {"code": "CRM_EXPORT_INVALID_VALUE", "fields": "Title", "words": "NUL character"},
    ),
    (
        person(15, 15, updated_at=None),
        {
            "code": "CRM_EXPORT_NULL_ORDER_BY",
            "fields": "updated_at",
            "words": "order_by column 'updated_at' is NULL",
        },
    ),
    (person(16, 16, birthdate="1990-05-17"), {"exported": {"Birthdate": "1990-05-17"}}),
    # The same key twice: the row ordered last wins.
    (person(17, 17, last_name="Older"), {"superseded": True}),
    (person(17, 18, last_name="Newer"), {"exported": {"LastName": "Newer"}}),
]


def write_people(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with sqlite3.connect(path) as db:
        db.execute(PEOPLE_DDL)
        for row in rows:
            values = dict(row)
            title = values.get("title")
            if isinstance(title, bytes) and not _is_utf8(title):
                # TEXT that is not UTF-8, as a careless writer leaves it (not a BLOB).
                values["title"] = None
                db.execute(_insert_sql(), values)
                db.execute(
                    "UPDATE people SET title = CAST(? AS TEXT) WHERE rowid = last_insert_rowid()",
                    (title,),
                )
            else:
                db.execute(_insert_sql(), values)
    db.close()


def _insert_sql() -> str:
    return (
        "INSERT INTO people VALUES (:id, :first_name, :last_name, :title, :description, "
        ":birthdate, :opted_out, :phone, :updated_at)"
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(seed=3) as handle:
        yield handle


def org_of(sandbox: SandboxHandle) -> Org:
    return Org(sandbox.base_url, sandbox.ca_path, sandbox.client_id, sandbox.client_secret)


def contacts_by_external_id(sandbox: SandboxHandle) -> dict[str, dict[str, Any]]:
    return {r["External_Id__c"]: r for r in sandbox.records("Contact")}


def errors_of(state_url: str, stream: str) -> dict[str, dict[str, Any]]:
    rows = sql(
        state_url,
        "SELECT record_key, external_id, error_code, error_message, error_fields, status, "
        "attempts FROM ExportErrors WHERE stream = :stream",
        stream=stream,
    )
    return {r["record_key"]: r for r in rows}


def runs_of(state_url: str) -> dict[str, dict[str, Any]]:
    rows = sql(state_url, "SELECT * FROM export_runs ORDER BY id")
    return {r["stream"]: r for r in rows}


def setup(
    tmp_path: Path,
    sandbox: SandboxHandle,
    state_url: str,
    people: Sequence[Mapping[str, Any]],
    *,
    pause_on_error: bool,
) -> Path:
    """A 'people' stream of bad rows beside a 'contacts' stream of good ones."""
    source = tmp_path / "app.db"
    write_people(source, people)
    write_contacts(source, contact_rows(range(1001, 1021)).rows)
    return write_config(
        tmp_path / "crm-export.toml",
        state_url=state_url,
        org=org_of(sandbox),
        streams=[
            Stream("people", sqlite_url(source), table="people", fields=PEOPLE_FIELDS),
            Stream("contacts", sqlite_url(source)),
        ],
        pause_on_error=pause_on_error,
        batch_size=10,
        log_level="debug",
    )


def job(config: Path, sandbox: SandboxHandle, job_id: str = "CRMExport") -> Any:
    done = run_cli("job", job_id, "--config", str(config), env=job_env(sandbox.client_secret))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done


def test_each_bad_row_becomes_a_named_record_error_and_the_rest_go_through(
    tmp_path: Path, sandbox: SandboxHandle, state_url: str
) -> None:
    config = setup(tmp_path, sandbox, state_url, [r for r, _ in BAD_ROWS], pause_on_error=False)

    done = job(config, sandbox)

    org = contacts_by_external_id(sandbox)
    errors = errors_of(state_url, "people")
    for row, expected in BAD_ROWS:
        key = expected.get("key", str(row["id"]))
        if "exported" in expected:
            assert key in org, row["id"]
            for field, value in expected["exported"].items():
                assert org[key][field] == value, (key, field)
            assert key not in errors or errors[key]["status"] != "open"
        elif "code" in expected:
            error = errors[key]
            assert (error["error_code"], error["status"]) == (expected["code"], "open"), key
            assert expected.get("fields", "id") == error["error_fields"], key
            assert expected.get("words", "") in error["error_message"], error["error_message"]
            assert key not in org
    # Nothing beyond the expected: one error per bad row, one record per accepted key.
    assert len(errors) == sum("code" in e for _, e in BAD_ROWS)
    accepted = {e.get("key", str(r["id"])) for r, e in BAD_ROWS if "exported" in e}
    assert set(org) == accepted | {str(k) for k in range(1001, 1021)}
    assert errors[f"(id is NULL; updated_at = {order_value(2)})"]["external_id"] == ""

    runs = runs_of(state_url)
    assert runs["contacts"]["outcome"] == "completed"
    assert runs["contacts"]["records_exported"] == 20
    people = runs["people"]
    assert people["outcome"] == "completed"
    assert people["records_read"] == len(BAD_ROWS)
    assert people["records_exported"] == len(accepted)
    assert people["records_failed"] == len(errors)
    assert "CRMExport people: completed" in done.stdout
    assert "CRMExport contacts: completed" in done.stdout
    # The duplicate key is said out loud, naming the key and both rows.
    warnings = [json.loads(line) for line in done.stderr.splitlines() if "duplicate_key" in line]
    assert len(warnings) == 1 and warnings[0]["key"] == "17"
    assert order_value(17) in warnings[0]["detail"] and order_value(18) in warnings[0]["detail"]


def test_the_re_export_retries_bad_rows_and_resolves_the_fixed_ones(
    tmp_path: Path, sandbox: SandboxHandle, state_url: str
) -> None:
    rows = [person(1, 1), person(None, 2), person(3, 3, phone=float("inf")), person(4, 4)]
    config = setup(tmp_path, sandbox, state_url, rows, pause_on_error=False)
    job(config, sandbox)
    null_name = f"(id is NULL; updated_at = {order_value(2)})"

    # Nothing fixed yet: both stay open, one more attempt each.
    job(config, sandbox, "CRMExport_ExportError")
    errors = errors_of(state_url, "people")
    assert {k: (e["status"], e["attempts"]) for k, e in errors.items()} == {
        null_name: ("open", 2),
        "3": ("open", 2),
    }

    # Fixed in place, without a new updated_at: only the re-export can find them now.
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("UPDATE people SET id = 2 WHERE id IS NULL")
        db.execute("UPDATE people SET phone = '555-0100' WHERE id = 3")
    db.close()
    job(config, sandbox, "CRMExport_ExportError")

    errors = errors_of(state_url, "people")
    assert {k: e["status"] for k, e in errors.items()} == {null_name: "resolved", "3": "resolved"}
    org = contacts_by_external_id(sandbox)
    assert {"1", "2", "3", "4"} <= set(org)
    assert org["3"]["Phone"] == "555-0100"


@pytest.mark.parametrize(
    ("bad", "fix", "code"),
    [
        (person(None, 3), "UPDATE people SET id = 3 WHERE id IS NULL", "CRM_EXPORT_NULL_KEY"),
        (
            person(3, 3, title=b"\xff\xfe"),
            "UPDATE people SET title = 'fixed' WHERE id = 3",
            "CRM_EXPORT_INVALID_VALUE",
        ),
        (
            person(3, 3, birthdate="31/12/1999"),
            "UPDATE people SET birthdate = '1999-12-31' WHERE id = 3",
            "JSON_PARSER_ERROR",
        ),
    ],
    ids=["null_key", "not_utf8", "not_a_date"],
)
def test_in_pause_mode_a_bad_row_pauses_its_stream_only(
    tmp_path: Path,
    sandbox: SandboxHandle,
    state_url: str,
    bad: dict[str, Any],
    fix: str,
    code: str,
) -> None:
    rows = [person(1, 1), person(2, 2), bad, person(4, 4), person(5, 5)]
    config = setup(tmp_path, sandbox, state_url, rows, pause_on_error=True)

    done = job(config, sandbox)

    assert "CRMExport people: paused" in done.stdout
    assert "CRMExport contacts: completed" in done.stdout
    org = contacts_by_external_id(sandbox)
    assert {"1", "2"} <= set(org) and not {"3", "4", "5"} & set(org)
    assert len([k for k in org if k.startswith("10")]) == 20
    status = json.loads(
        run_cli("status", "--json", "--config", str(config), env=job_env("x")).stdout
    )
    paused = {s["stream"]: s["paused"] for s in status}
    assert paused["contacts"] is None
    assert paused["people"]["error_code"] == code
    assert paused["people"]["waiting_behind"] == 2

    # Still bad: still paused, nothing behind it sent.
    job(config, sandbox)
    assert not {"3", "4", "5"} & set(contacts_by_external_id(sandbox))
    (error,) = errors_of(state_url, "people").values()
    assert (error["error_code"], error["attempts"], error["status"]) == (code, 2, "open")

    # Fixed in place: the next run sends it, then the rows behind it, in order.
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute(fix)
    db.close()
    done = job(config, sandbox)
    assert "CRMExport people: completed" in done.stdout
    assert {"1", "2", "3", "4", "5"} <= set(contacts_by_external_id(sandbox))
    assert [e["status"] for e in errors_of(state_url, "people").values()] == ["resolved"]
    writes = [w["external_id"] for w in sandbox.writes() if w.get("sobject") == "Contact"]
    people_writes = [w for w in writes if w in {"1", "2", "3", "4", "5"}]
    assert people_writes.index("3") < people_writes.index("4") < people_writes.index("5")


def test_a_null_order_by_written_later_is_still_reported(
    tmp_path: Path, sandbox: SandboxHandle, state_url: str
) -> None:
    config = setup(tmp_path, sandbox, state_url, [person(1, 1), person(2, 2)], pause_on_error=True)
    job(config, sandbox)
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute(_insert_sql(), person(3, 3, updated_at=None))
    db.close()

    done = job(config, sandbox)

    assert "CRMExport people: completed" in done.stdout  # it holds nothing back
    assert errors_of(state_url, "people")["3"]["error_code"] == "CRM_EXPORT_NULL_ORDER_BY"
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("UPDATE people SET updated_at = ? WHERE id = 3", (order_value(3),))
    db.close()
    job(config, sandbox)
    assert "3" in contacts_by_external_id(sandbox)
    assert errors_of(state_url, "people")["3"]["status"] == "resolved"


# -- a PostgreSQL source: the types only it has ----------------------------------------------

PG_ROWS: list[tuple[dict[str, Any], str | None, str]] = [
    # (row, expected error code or None when exported, words in the message)
    ({"id": 1}, None, ""),
    ({"id": 2, "score": float("nan")}, "CRM_EXPORT_INVALID_VALUE", "nan is not a number"),
    ({"id": 3, "score": float("inf")}, "CRM_EXPORT_INVALID_VALUE", "inf is not a number"),
    ({"id": 4, "amount": "NaN"}, "CRM_EXPORT_INVALID_VALUE", "NaN is not a number"),
    (
        {"id": 5, "born": "0001-01-01"},
        "CRM_EXPORT_INVALID_VALUE",
        "column 'born' (-> Birthdate): 0001-01-01 is outside the dates Salesforce accepts",
    ),
    ({"id": 6, "born": "9999-12-31"}, "CRM_EXPORT_INVALID_VALUE", "9999-12-31 is outside"),
    ({"id": 7, "born": "1990-05-17"}, None, ""),
    ({"id": 8, "note": "\U0001f600 ok"}, None, ""),
    ({"id": 9, "tags": ["a", "b"]}, None, ""),
]


def test_a_postgresql_source_with_nan_infinity_and_far_dates(
    tmp_path: Path, sandbox: SandboxHandle, state_url: str, postgres_state_url: str
) -> None:
    source = postgres_state_url  # a database of its own, apart from state_url
    columns = (
        "id integer, score double precision, amount numeric, born date, note text, "
        "tags text[], updated_at timestamptz NOT NULL"
    )
    engine = sa.create_engine(source)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE people ({columns})")
            for i, (row, _, _) in enumerate(PG_ROWS):
                values: dict[str, Any] = {"score": None, "amount": None, "born": None, "note": None}
                values |= {"tags": None, **row, "at": f"2026-01-01T00:00:{i:02d}Z"}
                conn.execute(
                    sa.text(
                        "INSERT INTO people VALUES (:id, :score, CAST(:amount AS numeric), "
                        "CAST(:born AS date), :note, :tags, CAST(:at AS timestamptz))"
                    ),
                    values,
                )
    finally:
        engine.dispose()
    fields = {"LastName": "note", "Phone": "score", "Title": "amount", "Birthdate": "born"}
    fields["Description"] = "tags"
    write_contacts(tmp_path / "app.db", contact_rows(range(1001, 1006)).rows)
    config = write_config(
        tmp_path / "crm-export.toml",
        state_url=state_url,
        org=org_of(sandbox),
        streams=[
            Stream("people", source, table="people", fields=fields),
            Stream("contacts", sqlite_url(tmp_path / "app.db")),
        ],
        pause_on_error=False,
    )
    # LastName is required: fill it where the row has no note.
    engine = sa.create_engine(source)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE people SET note = 'n' || id WHERE note IS NULL")
    finally:
        engine.dispose()

    done = job(config, sandbox)

    assert "CRMExport people: completed" in done.stdout
    assert "CRMExport contacts: completed" in done.stdout
    org = contacts_by_external_id(sandbox)
    errors = errors_of(state_url, "people")
    for row, code, words in PG_ROWS:
        key = str(row["id"])
        if code is None:
            assert key in org and key not in errors
        else:
            assert errors[key]["error_code"] == code and words in errors[key]["error_message"]
            assert key not in org
    assert org["7"]["Birthdate"] == "1990-05-17"
    assert org["8"]["LastName"] == "\U0001f600 ok"
    assert org["9"]["Description"] == '["a", "b"]'
