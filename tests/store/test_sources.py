"""Reading the sources through SqlStore: keyset pages, rows by key, checks, on SQLite and
PostgreSQL sources."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from crm_export.errors import SourceError, TransientError
from crm_export.ports import (
    Position,
)
from crm_export.store import SqlStore, migrations
from tests.store.store_kit import BIG, CreateSourceTable, contacts, contacts_table, read_all


def test_read_batch_pages_in_order_with_ties_broken_by_key(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    rows = [
        {"id": BIG + 5, "updated": 2, "name": "e"},
        {"id": BIG + 1, "updated": 3, "name": "a"},
        {"id": BIG + 3, "updated": 2, "name": "c"},
        {"id": BIG + 2, "updated": 1, "name": "b"},
        {"id": BIG + 4, "updated": 2, "name": "d"},
        {"id": BIG + 7, "updated": 1, "name": "g"},
        {"id": BIG + 6, "updated": 3, "name": "f"},
    ]
    contacts_table(create_source_table, source_url, rows)
    source = contacts(source_url)

    batches = read_all(store, source, limit=3)

    assert [len(b) for b in batches] == [3, 3, 1]
    got = [(r.order_value, r.key - BIG) for b in batches for r in b]
    assert got == [(1, 2), (1, 7), (2, 3), (2, 4), (2, 5), (3, 1), (3, 6)]
    first = batches[0][0]
    assert first.values == {"id": BIG + 2, "name": "b"}
    assert first.record_key == str(BIG + 2)


def test_read_batch_resumes_after_a_position_and_sees_new_rows(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(
        create_source_table, source_url, [{"id": i, "updated": 1, "name": "x"} for i in (1, 2)]
    )
    source = contacts(source_url)
    done = store.read_batch(source, None, 10)
    engine = sa.create_engine(source_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO contacts (id, updated, name) VALUES (0, 5, 'late'), (3, 1, 'tie')"
            )
    finally:
        engine.dispose()
    after = store.read_batch(source, done[-1].position, 10)
    assert [(r.key, r.values["name"]) for r in after] == [(3, "tie"), (0, "late")]
    assert store.count_after(source, done[-1].position) == 2
    assert store.count_after(source, None) == 4


def test_read_batch_from_a_query_with_colons_in_it(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(
        create_source_table,
        source_url,
        [{"id": 1, "updated": 1, "name": "x"}, {"id": 2, "updated": 2, "name": ":named"}],
    )
    query = (
        "SELECT id, updated, name || ' at 10:30' AS label FROM contacts WHERE name <> ':nobody';  "
    )
    source = contacts(source_url, table=None, query=query, columns=("label",))
    rows = store.read_batch(source, None, 10)
    assert [(r.key, r.values) for r in rows] == [
        (1, {"label": "x at 10:30"}),
        (2, {"label": ":named at 10:30"}),
    ]
    assert store.read_batch(source, rows[0].position, 10) == rows[1:]


def test_null_order_by_rows_are_read_first(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(
        create_source_table,
        source_url,
        [
            {"id": 5, "updated": None, "name": "n5"},
            {"id": 1, "updated": 1, "name": "a"},
            {"id": 2, "updated": None, "name": "n2"},
            {"id": 3, "updated": 0, "name": "c"},
        ],
    )
    source = contacts(source_url)
    batches = read_all(store, source, limit=1)
    assert [(r.order_value, r.key) for b in batches for r in b] == [
        (None, 2),
        (None, 5),
        (0, 3),
        (1, 1),
    ]
    assert store.count_after(source, Position(None, 2)) == 3
    assert store.count_after(source, Position(0, 3)) == 1


def test_rows_with_a_null_key_come_back_and_are_not_lost_at_a_batch_edge(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    create_source_table(
        source_url,
        "contacts",
        {"id": sa.Integer(), "updated": sa.Integer(), "name": sa.String(50)},
        [
            {"id": 1, "updated": 1, "name": "a"},
            {"id": None, "updated": 1, "name": "null-1"},
            {"id": None, "updated": 1, "name": "null-2"},
            {"id": 2, "updated": 2, "name": "b"},
        ],
    )
    source = contacts(source_url)
    batches = read_all(store, source, limit=1)
    # Both NULL-key rows share one order value: the first batch grows to hold both.
    assert [sorted(str(r.values["name"]) for r in b) for b in batches] == [
        ["null-1", "null-2"],
        ["a"],
        ["b"],
    ]
    assert all(r.key is None for r in batches[0])
    assert store.count_after(source, Position(1, None)) == 2


def test_read_by_keys_with_an_integer_key(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(
        create_source_table,
        source_url,
        [{"id": i, "updated": i % 3, "name": f"n{i}"} for i in range(1, 1201)]
        + [{"id": BIG, "updated": 0, "name": "big"}],
    )
    source = contacts(source_url)
    found = store.read_by_keys(source, ["1", "1200", str(BIG), "007", " 2", "abc", "1.0"])
    assert {k: r.values["name"] for k, r in found.items()} == {
        "1": "n1",
        "1200": "n1200",
        str(BIG): "big",
    }
    # More keys than one IN list holds.
    every = store.read_by_keys(source, [str(i) for i in range(1, 1201)])
    assert len(every) == 1200
    assert store.read_by_keys(source, []) == {}


def test_read_by_keys_with_a_text_key_and_from_a_query(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    create_source_table(
        source_url,
        "contacts",
        {"id": sa.String(20), "updated": sa.Integer(), "name": sa.String(50)},
        [
            {"id": "A-1", "updated": 1, "name": "a"},
            {"id": "ünï:2", "updated": 1, "name": "u"},
            {"id": "10", "updated": 1, "name": "ten"},
        ],
        primary_key="id",
    )
    for source in (
        contacts(source_url),
        contacts(source_url, table=None, query="SELECT id, updated, name FROM contacts"),
    ):
        found = store.read_by_keys(source, ["A-1", "ünï:2", "10", "missing"])
        assert {k: r.values["name"] for k, r in found.items()} == {
            "A-1": "a",
            "ünï:2": "u",
            "10": "ten",
        }


def test_read_by_keys_from_a_query_casts_an_integer_key(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(create_source_table, source_url, [{"id": 42, "updated": 1, "name": "x"}])
    source = contacts(source_url, table=None, query="SELECT * FROM contacts")
    assert list(store.read_by_keys(source, ["42", "43"])) == ["42"]


def test_undecodable_sqlite_text_comes_back_as_bytes(tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    migrations.upgrade(state)
    raw = sqlite3.connect(tmp_path / "source.db")
    raw.execute("CREATE TABLE contacts (id INTEGER PRIMARY KEY, updated INTEGER, name TEXT)")
    raw.execute("INSERT INTO contacts VALUES (1, 1, 'ok'), (2, 1, CAST(X'FF41' AS TEXT))")
    raw.execute("INSERT INTO contacts VALUES (3, 1, 'fine')")
    raw.commit()
    raw.close()
    source = contacts(f"sqlite:///{tmp_path / 'source.db'}")
    with SqlStore(state) as store:
        rows = store.read_batch(source, None, 10)
        assert [r.values["name"] for r in rows] == ["ok", b"\xffA", "fine"]
        assert store.read_by_keys(source, ["2"])["2"].values["name"] == b"\xffA"


def test_a_source_shared_with_the_state_database(state_url: str) -> None:
    engine = sa.create_engine(state_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE contacts (id INTEGER, updated INTEGER, name TEXT)")
            conn.exec_driver_sql("INSERT INTO contacts VALUES (1, 1, 'a')")
    finally:
        engine.dispose()
    with SqlStore(state_url) as store:
        source = contacts(state_url)
        store.check_source(source)
        assert [r.key for r in store.read_batch(source, None, 10)] == [1]


def test_check_source_accepts_a_good_table_and_query(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(create_source_table, source_url, [])
    store.check_source(contacts(source_url))
    store.check_source(
        contacts(source_url, table=None, query="SELECT id, updated, name FROM contacts")
    )


def test_check_source_names_a_missing_column(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(create_source_table, source_url, [])
    with pytest.raises(SourceError) as info:
        store.check_source(contacts(source_url, columns=("id", "emial")))
    assert str(info.value) == "stream 'contacts': column 'emial' does not exist in table contacts"

    query = "SELECT id, updated FROM contacts"
    with pytest.raises(SourceError, match="column 'name' does not exist in the query"):
        store.check_source(contacts(source_url, table=None, query=query))


def test_check_source_names_a_missing_table_and_a_broken_query(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    contacts_table(create_source_table, source_url, [])
    with pytest.raises(SourceError, match="stream 'contacts': table 'contatcs' does not exist"):
        store.check_source(contacts(source_url, table="contatcs"))
    with pytest.raises(SourceError, match="stream 'contacts': cannot read the source"):
        store.check_source(contacts(source_url, table=None, query="SELEC id FROM contacts"))


def test_an_unreachable_source_is_a_transient_error(store: SqlStore) -> None:
    # Nothing listens on port 1: the next run may well find the database back.
    source = contacts("postgresql+psycopg://crm:secret@127.0.0.1:1/nowhere")
    with pytest.raises(TransientError) as info:
        store.read_batch(source, None, 10)
    assert "secret" not in str(info.value)
    assert "stream 'contacts'" in str(info.value)


@pytest.mark.postgres
def test_uuid_keys_page_and_are_found_by_text(
    postgres_state_url: str, create_source_table: CreateSourceTable
) -> None:
    ids = sorted(uuid.uuid4() for _ in range(5))
    create_source_table(
        postgres_state_url,
        "contacts",
        {"id": sa.Uuid(), "updated": sa.Integer(), "name": sa.String(50)},
        [{"id": u, "updated": 1, "name": str(n)} for n, u in enumerate(ids)],
        primary_key="id",
    )
    source = contacts(postgres_state_url)
    with SqlStore(postgres_state_url) as store:
        batches = read_all(store, source, limit=2)
        assert [r.key for b in batches for r in b] == ids
        found = store.read_by_keys(source, [str(ids[3]), "not-a-uuid", str(ids[3]).upper()])
        assert list(found) == [str(ids[3])]


@pytest.mark.postgres
def test_an_enum_order_by_column_pages(postgres_state_url: str) -> None:
    # psycopg returns enum values as str; binding them back as VARCHAR would fail with
    # "operator does not exist: tier > character varying".
    engine = sa.create_engine(postgres_state_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TYPE tier AS ENUM ('low', 'mid', 'high')")
            conn.exec_driver_sql("CREATE TABLE contacts (id int, updated tier, name text)")
            conn.exec_driver_sql(
                "INSERT INTO contacts VALUES (1, 'high', 'a'), (2, 'low', 'b'), (3, 'mid', 'c')"
            )
    finally:
        engine.dispose()
    with SqlStore(postgres_state_url) as store:
        batches = read_all(store, contacts(postgres_state_url), limit=1)
    assert [r.order_value for b in batches for r in b] == ["low", "mid", "high"]


def test_a_schema_qualified_table_and_a_view_are_sources(
    store: SqlStore, source_url: str, create_source_table: CreateSourceTable
) -> None:
    # SQLite's own schema is "main"; on PostgreSQL, a schema of the user's.
    schema = "main" if source_url.startswith("sqlite") else "crm"
    engine = sa.create_engine(source_url)
    try:
        if schema == "crm":
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE SCHEMA crm")
        create_source_table(
            source_url,
            "contacts",
            {"id": sa.Integer(), "updated": sa.Integer(), "name": sa.String(50)},
            [{"id": 1, "updated": 1, "name": "a"}, {"id": 2, "updated": 2, "name": "b"}],
            primary_key="id",
            schema=schema,
        )
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE VIEW {schema}.recent AS SELECT * FROM {schema}.contacts WHERE id > 1"
            )
    finally:
        engine.dispose()
    for table, names in ((f"{schema}.contacts", ["a", "b"]), (f"{schema}.recent", ["b"])):
        source = contacts(source_url, table=table)
        store.check_source(source)
        assert [r.values["name"] for r in store.read_batch(source, None, 10)] == names
        assert list(store.read_by_keys(source, ["2"])) == ["2"]
    with pytest.raises(SourceError, match=f"table '{schema}.nothing' does not exist"):
        store.check_source(contacts(source_url, table=f"{schema}.nothing"))
