"""The index check behind the ``source_index_missing`` warning and ``crm-export check``'s
note: on SQLite and on PostgreSQL, the statement it prints is valid SQL that, once run,
silences it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from crm_export.ports import StreamSource
from crm_export.store.sources import SourceReader
from tests.conftest import CreateSourceTable

TABLE = "idx_contacts"


def source(url: str, *, key: str = "id", table: str | None = TABLE) -> StreamSource:
    return StreamSource(
        name="contacts",
        key=key,
        order_by="updated_at",
        columns=("name",),
        source_url=url,
        table=table,
        query=None if table else f"SELECT id, updated_at, name FROM {TABLE}",
    )


@pytest.fixture
def reader() -> Iterator[SourceReader]:
    r = SourceReader()
    yield r
    r.close()


def run_ddl(url: str, statement: str) -> None:
    # CREATE INDEX CONCURRENTLY (PostgreSQL) runs outside a transaction, as psql runs it.
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def text_keyed_table(url: str, create: CreateSourceTable) -> None:
    columns = {"id": sa.Text, "updated_at": sa.Text, "name": sa.Text}
    create(url, TABLE, columns, [{"id": "a", "updated_at": "2026", "name": "A"}], primary_key="id")


def test_a_table_without_the_index_gets_a_statement_that_fixes_it(
    source_url: str, reader: SourceReader, create_source_table: CreateSourceTable
) -> None:
    text_keyed_table(source_url, create_source_table)
    statement = reader.missing_keyset_index(source(source_url))
    assert statement is not None
    assert statement.startswith("CREATE INDEX")
    assert f"ON {TABLE} (updated_at, id" in statement
    run_ddl(source_url, statement)
    assert reader.missing_keyset_index(source(source_url)) is None
    run_ddl(source_url, statement)  # IF NOT EXISTS: running it twice is harmless


def test_an_index_on_the_order_column_alone_is_not_enough_for_a_text_key(
    source_url: str, reader: SourceReader, create_source_table: CreateSourceTable
) -> None:
    # Rows sharing an updated_at (a bulk load) would be sorted again by every batch.
    text_keyed_table(source_url, create_source_table)
    run_ddl(source_url, f"CREATE INDEX idx_updated ON {TABLE} (updated_at)")
    assert reader.missing_keyset_index(source(source_url)) is not None


def test_an_index_on_order_and_key_serves(
    source_url: str, reader: SourceReader, create_source_table: CreateSourceTable
) -> None:
    text_keyed_table(source_url, create_source_table)
    run_ddl(source_url, f"CREATE INDEX idx_keyset ON {TABLE} (updated_at, id)")
    found = reader.missing_keyset_index(source(source_url))
    if source_url.startswith("sqlite"):
        assert found is None
    else:
        # PostgreSQL reads the key NULLS FIRST: a plain index leaves an Incremental Sort of
        # each run of equal order values, so the advice names the index that avoids it.
        assert found is not None and "id NULLS FIRST" in found


def test_sqlite_integer_primary_key_needs_only_the_order_column(
    tmp_path: Path, reader: SourceReader, create_source_table: CreateSourceTable
) -> None:
    url = f"sqlite:///{tmp_path}/rowid.db"
    run_ddl(url, f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, updated_at TEXT, name TEXT)")
    assert reader.missing_keyset_index(source(url)) is not None
    # Every SQLite index entry ends with the rowid, which this key is another name for.
    run_ddl(url, f"CREATE INDEX idx_updated ON {TABLE} (updated_at)")
    assert reader.missing_keyset_index(source(url)) is None


def test_a_query_source_is_not_checked(
    source_url: str, reader: SourceReader, create_source_table: CreateSourceTable
) -> None:
    text_keyed_table(source_url, create_source_table)
    assert reader.missing_keyset_index(source(source_url, table=None)) is None


def test_names_are_quoted_for_the_database(
    source_url: str, reader: SourceReader, create_source_table: CreateSourceTable
) -> None:
    columns = {"Id": sa.Text, "updated_at": sa.Text, "name": sa.Text}
    create_source_table(source_url, "Odd Table", columns, primary_key="Id")
    odd = source(source_url, key="Id", table="Odd Table")
    statement = reader.missing_keyset_index(odd)
    assert statement is not None and '"Odd Table"' in statement and '"Id"' in statement
    run_ddl(source_url, statement)
    assert reader.missing_keyset_index(odd) is None


def test_a_partial_index_does_not_serve(
    source_url: str, reader: SourceReader, create_source_table: CreateSourceTable
) -> None:
    # It holds only some rows, and the export reads them all.
    text_keyed_table(source_url, create_source_table)
    statement = reader.missing_keyset_index(source(source_url))
    assert statement is not None
    run_ddl(source_url, f"{statement.removesuffix(';')} WHERE name IS NOT NULL")
    assert reader.missing_keyset_index(source(source_url)) == statement


def test_a_sqlite_unique_constraint_on_order_and_key_serves(
    tmp_path: Path, reader: SourceReader
) -> None:
    url = f"sqlite:///{tmp_path}/unique.db"
    run_ddl(
        url,
        f"CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, updated_at TEXT, name TEXT,"
        " UNIQUE (updated_at, id))",
    )
    assert reader.missing_keyset_index(source(url)) is None
