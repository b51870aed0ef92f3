"""Whether a stream's source table has the index its keyset reads need, and the
``CREATE INDEX`` statement that gives it one.

Every read of a source (``sources.SourceReader.read_batch`` and the lookback and late-commit
reads) is a keyset query::

    WHERE order_by >= :o AND (order_by > :o OR (order_by = :o AND key > :k))
    ORDER BY order_by, key [NULLS FIRST on PostgreSQL] LIMIT :n

(plus ``WHERE order_by IS NULL ORDER BY key`` for NULL order values). Only a b-tree whose
leading columns are (order_by, key), in that order and direction, both bounds the scan and
yields the rows already sorted; without one, every batch scans and sorts the whole table
(at 1M rows: 180-310 ms per batch instead of 0.3-4 ms). What each planner can use:

* SQLite: an index or primary key leading with (order_by, key), ascending (or both
  descending: it scans backwards). An index on (order_by) alone is enough when the key is
  the table's INTEGER PRIMARY KEY, because SQLite ends every index entry with the rowid it
  aliases (EXPLAIN QUERY PLAN shows no temporary b-tree). Otherwise (order_by) alone still
  leaves a sort of each run of equal order values: "USE TEMP B-TREE FOR RIGHT PART OF ORDER
  BY", which is every batch of a bulk load that stamped one updated_at on all its rows.
* PostgreSQL: the query sorts the key NULLS FIRST (so that NULL keys come back to be
  rejected, not skipped), and the planner only takes presorted rows from an index whose
  NULLS order matches, even for a NOT NULL key. An index on (order_by, key) or on
  (order_by), or a primary key, gives an Incremental Sort of each run of equal order values
  instead: the same trap as above. So the index must be (order_by, key NULLS FIRST), or its
  backwards twin (order_by DESC, key DESC NULLS LAST).
* Other databases: an index leading with (order_by, key); their NULL ordering is not checked.

A query source (``query = ...``) can not be checked: its plan depends on the tables and
joins inside it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from crm_export.ports import StreamSource
from crm_export.store.sources import _same_name, _split_table

__all__ = ["index_statement", "missing_keyset_index"]

# (descending, nulls first) of each index column, in the order the keyset query needs.
_Sorting = tuple[bool, bool]
_POSTGRESQL_FORWARD: tuple[_Sorting, _Sorting] = ((False, False), (False, True))
_POSTGRESQL_BACKWARD: tuple[_Sorting, _Sorting] = ((True, True), (True, False))


def missing_keyset_index(conn: Connection, source: StreamSource) -> str | None:
    """The ``CREATE INDEX`` statement to run when ``source``'s table has no index its keyset
    reads can use; None when it has one, or when the source is a query (which can not be
    checked). A few catalog queries, through SQLAlchemy's inspector."""
    if source.table is None:
        return None
    schema, table = _split_table(source.table)
    insp = sa.inspect(conn)
    dialect = conn.dialect
    wanted = (source.order_by, source.key)
    try:
        indexes = insp.get_indexes(table, schema=schema)
        pk = insp.get_pk_constraint(table, schema=schema).get("constrained_columns") or []
    except NotImplementedError:  # a third-party dialect that can not list them: no advice
        return None
    candidates: list[tuple[list[str | None], Mapping[str, Sequence[str]]]] = [
        (list(ix["column_names"]), ix.get("column_sorting") or {})
        for ix in indexes
        # A partial index (WHERE ...) only holds some rows: the reads need all of them.
        if not any(k.endswith("_where") and v is not None for k, v in _options(ix).items())
    ]
    if pk:
        candidates.append((list(pk), {}))
    if dialect.name == "sqlite":
        # SQLite's UNIQUE constraints are indexes the inspector does not list as such.
        uniques = insp.get_unique_constraints(table, schema=schema)
        candidates += [(list(u["column_names"]), {}) for u in uniques]
    for columns, sorting in candidates:
        if _serves(columns, sorting, wanted, dialect):
            return None
        if (
            dialect.name == "sqlite"
            and len(columns) == 1
            and columns[0] is not None
            and _names_match(columns[0], source.order_by, dialect)
            and _is_rowid_alias(insp, table, schema, pk, source.key, dialect)
        ):
            return None
    if _view(insp, table, schema):
        return None  # a view's plan is its query's, which can not be checked either
    return index_statement(source, dialect)


def index_statement(source: StreamSource, dialect: sa.Dialect) -> str:
    """``CREATE INDEX`` on ``source``'s table for its keyset reads, quoted for ``dialect``.

    On PostgreSQL it is ``CONCURRENTLY``, so that building it on a live table does not block
    the application's writes (run it outside a transaction: psql does by default)."""
    assert source.table is not None, "a query source has no table to index"
    schema, table = _split_table(source.table)
    target = sa.Table(
        table, sa.MetaData(), sa.Column(source.order_by), sa.Column(source.key), schema=schema
    )
    key: Any = target.c[source.key]
    if dialect.name == "postgresql":
        key = key.nulls_first()
    name = _index_name(f"ix_{table}_{source.order_by}_{source.key}")
    index = sa.Index(name, target.c[source.order_by], key, postgresql_concurrently=True)
    ddl = sa.schema.CreateIndex(index, if_not_exists=True)
    return str(ddl.compile(dialect=dialect)).strip()


def _serves(
    columns: Sequence[str | None],
    sorting: Mapping[str, Sequence[str]],
    wanted: tuple[str, str],
    dialect: sa.Dialect,
) -> bool:
    if len(columns) < 2:
        return False
    lead = columns[0], columns[1]
    pairs = zip(lead, wanted, strict=True)
    if not all(c is not None and _names_match(c, w, dialect) for c, w in pairs):
        return False
    found = tuple(_sorting(c or "", sorting, dialect) for c in lead)
    if dialect.name == "postgresql":
        return found in (_POSTGRESQL_FORWARD, _POSTGRESQL_BACKWARD)
    # Elsewhere only the direction is checked, and a backward scan serves as well.
    return found[0][0] == found[1][0]


def _options(index: Any) -> Mapping[str, Any]:
    options: Mapping[str, Any] = index.get("dialect_options") or {}
    return options


def _sorting(column: str, sorting: Mapping[str, Sequence[str]], dialect: sa.Dialect) -> _Sorting:
    options = set(sorting.get(column, ()))
    descending = "desc" in options
    if "nulls_first" in options:
        return descending, True
    if "nulls_last" in options:
        return descending, False
    # PostgreSQL sorts NULL as the largest value: last ascending, first descending.
    return descending, descending if dialect.name == "postgresql" else False


def _is_rowid_alias(
    insp: sa.Inspector,
    table: str,
    schema: str | None,
    pk: Sequence[str],
    key: str,
    dialect: sa.Dialect,
) -> bool:
    """Whether ``key`` is SQLite's rowid under another name: the one primary key column,
    declared exactly INTEGER."""
    if len(pk) != 1 or not _names_match(pk[0], key, dialect):
        return False
    for column in insp.get_columns(table, schema=schema):
        if _names_match(column["name"], key, dialect):
            return str(column["type"]).upper() == "INTEGER"
    return False


def _view(insp: sa.Inspector, table: str, schema: str | None) -> bool:
    try:
        return table in insp.get_view_names(schema=schema)
    except NotImplementedError:  # pragma: no cover - every bundled dialect lists views
        return False


def _names_match(actual: str, wanted: str, dialect: sa.Dialect) -> bool:
    return _same_name(actual, wanted, dialect)


def _index_name(name: str) -> str:
    # A plain lower-case name needs no quotes in psql or sqlite3. PostgreSQL keeps 63 bytes
    # of a name and MySQL 64: a long one gets a stable hash tail.
    name = re.sub(r"\W+", "_", name).lower()
    if len(name.encode("utf-8")) <= 60:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{name.encode('utf-8')[:50].decode('utf-8', 'ignore')}_{digest}"
