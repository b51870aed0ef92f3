"""Reading the stream sources: keyset pages, late commits, rows by key, and checks.

Source rows are read with keyset pagination, one short statement per batch, so neither memory
nor transaction age grows with the size of the source table. Identifiers are quoted by
SQLAlchemy (never formatted into SQL by hand), and a user's query is passed through untouched.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.types import NullType

from crm_export.errors import SourceError, SourceMissingError, TransientError
from crm_export.ports import Position, SourceRow, SourceValue, StreamSource, record_key_text
from crm_export.store.engines import create_source_engine, error_reason, is_transient
from crm_export.store.statements import chunks
from crm_export.store.urls import is_memory_sqlite, is_sqlite, redact_url

__all__ = ["SourceReader", "preflight_source"]


class SourceReader:
    """The reads of ``ports.Store`` on the stream sources.

    Source engines are created on first use per ``source_url`` and cached; ``shared`` lends
    engines the caller owns (the state database's, when a source lives there too), which
    ``close`` leaves alone. Thread-safe: every method takes its own connection.
    """

    def __init__(self, shared: Mapping[str, Engine] | None = None) -> None:
        self._shared = dict(shared or {})
        self._engines: dict[str, Engine] = dict(self._shared)
        self._key_types: dict[tuple[str, str], Callable[[str], Any] | None] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Dispose the engines this reader created."""
        with self._lock:
            engines = [e for url, e in self._engines.items() if url not in self._shared]
            self._engines.clear()
        for engine in engines:
            engine.dispose()

    def _source_engine(self, source: StreamSource) -> Engine:
        url = source.source_url
        with self._lock:
            engine = self._engines.get(url)
            if engine is None:
                try:
                    engine = create_source_engine(url)
                except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
                    raise SourceError(
                        f"stream {source.name!r}: cannot use source URL {redact_url(url)}: {exc}"
                    ) from exc
                self._engines[url] = engine
            return engine

    @contextmanager
    def _source(self, source: StreamSource) -> Iterator[Connection]:
        engine = self._source_engine(source)
        try:
            with engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            _source_failure(source, exc)

    def read_batch(
        self, source: StreamSource, after: Position | None, limit: int
    ) -> list[SourceRow]:
        """Up to ``limit`` rows strictly after ``after``, in (order_by, key) order.

        One short statement per call (keyset pagination): the caller asks again with the last
        row's position, so memory is bounded and no cursor stays open between batches.

        NULLs are never skipped silently. The order is: rows whose order_by is NULL first
        (by key), then the others by (order_by, key); within one order value, a NULL key
        sorts first. So a first export reads every row, including NULL order_by rows, and a
        row with a NULL key comes back with ``key=None`` for the core to reject. As for any
        row written later with an order_by value *behind* the position, a NULL order_by row
        added after the stream moved past the NULL section is not re-read by incremental
        runs; use a non-NULL order_by (e.g. ``updated_at`` with a default).

        Rows with a NULL key and the same order value can not be told apart, so a batch never
        ends in the middle of them: it grows to include all of them (the only way a batch
        exceeds ``limit``).
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        q = _SourceQuery(source)
        with self._source(source) as conn:
            dialect = conn.dialect
            rows: list[SourceRow] = []
            if after is None or after.order_value is None:
                rows = self._fetch(
                    conn,
                    q.select()
                    .where(_null_order_after(q, after))
                    .order_by(_nulls_first(q.key, dialect))
                    .limit(limit),
                    q,
                )
            if len(rows) < limit:
                rows += self._fetch(
                    conn,
                    q.select()
                    .where(_ordered_after(q, after))
                    .order_by(q.order, _nulls_first(q.key, dialect))
                    .limit(limit - len(rows)),
                    q,
                )
            if len(rows) == limit and rows[-1].key is None:
                rows = self._complete_null_keys(conn, q, rows)
        return rows

    # Late commits (PostgreSQL). A transaction may commit a row whose order_by sorts behind
    # a position the exporter already passed: it ran long, or its clock was behind. Such a
    # row was invisible when the position moved past it, so the position alone would skip it
    # forever. Every run therefore notes pg_current_snapshot() before it reads anything, and
    # the next run re-reads the rows behind its position whose xmin is not older than that
    # snapshot's xmin (the oldest transaction then in flight). That is a superset of the late
    # rows, savepoint-written ones included (pg_current_snapshot lists top-level xids only);
    # resending the few others is harmless, because upserts by external ID are idempotent.

    def source_snapshot(self, source: StreamSource) -> str | None:
        """pg_current_snapshot() of a PostgreSQL table source, as text; None elsewhere.

        Query sources have no single xmin to look at, and SQLite runs one writer at a time,
        so for them a late row is only possible through clock skew, which the docs warn of.
        """
        if source.table is None or self._source_engine(source).dialect.name != "postgresql":
            return None
        with self._source(source) as conn:
            snapshot = conn.execute(sa.select(sa.cast(sa.func.pg_current_snapshot(), sa.Text)))
            return str(snapshot.scalar_one())

    def read_late(
        self,
        source: StreamSource,
        snapshot: str,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        """Up to ``limit`` rows in (order_by, key) order, after ``after`` and at or before
        ``upto``, written by a transaction not older than the oldest one in flight when
        ``snapshot`` was taken."""
        if source.table is None or upto.order_value is None:
            return []
        horizon = int(snapshot.split(":", 1)[0])
        q = _SourceQuery(source)
        # xmin is a 32-bit xid and wraps around: "at or after the horizon" is the circular
        # comparison PostgreSQL itself uses. xids below 3 are frozen or bootstrap: old rows.
        xid = sa.cast(sa.cast(q.from_.c.xmin, sa.Text), sa.BigInteger)
        wrap = 2**32
        recent = sa.and_(xid >= 3, sa.func.mod(xid - horizon % wrap + wrap, wrap) < 2**31)
        not_past = sa.not_(_ordered_after(q, upto))
        with self._source(source) as conn:
            return self._fetch(
                conn,
                q.select()
                .where(q.order.is_not(None), _ordered_after(q, after), not_past, recent)
                .order_by(q.order, _nulls_first(q.key, conn.dialect))
                .limit(limit),
                q,
            )

    def read_window(
        self,
        source: StreamSource,
        since: SourceValue,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        """Up to ``limit`` rows in (order_by, key) order whose order_by is at least
        ``since``, at or before ``upto`` and after ``after``: the lookback window behind a
        position, paged like ``read_batch``. The bound compares in the column's own type
        (text with text, as SQLite keeps timestamps), so an index on order_by serves it."""
        if upto.order_value is None:
            return []
        q = _SourceQuery(source)
        not_past = sa.not_(_ordered_after(q, upto))
        with self._source(source) as conn:
            return self._fetch(
                conn,
                q.select()
                .where(q.order >= _bind(since), _ordered_after(q, after), not_past)
                .order_by(q.order, _nulls_first(q.key, conn.dialect))
                .limit(limit),
                q,
            )

    def latest_order_value(self, source: StreamSource) -> SourceValue:
        """The greatest order_by value of the source (None when it has no ordered row): what
        the type of a stream's order values is, for the lookback check."""
        q = _SourceQuery(source)
        stmt = sa.select(q.order).where(q.order.is_not(None)).order_by(q.order.desc()).limit(1)
        with self._source(source) as conn:
            return conn.execute(stmt).scalar()

    @staticmethod
    def _fetch(conn: Connection, stmt: sa.Select[Any], q: _SourceQuery) -> list[SourceRow]:
        return [q.to_row(r) for r in conn.execute(stmt)]

    def _complete_null_keys(
        self, conn: Connection, q: _SourceQuery, rows: list[SourceRow]
    ) -> list[SourceRow]:
        last = rows[-1].order_value
        while rows and rows[-1].key is None and rows[-1].order_value == last:
            rows.pop()
        same_order = q.order.is_(None) if last is None else q.order == _bind(last)
        return rows + self._fetch(conn, q.select().where(same_order, q.key.is_(None)), q)

    def count_after(self, source: StreamSource, position: Position | None) -> int:
        """How many source rows come after ``position`` (waiting behind a pause), in the same
        order as ``read_batch``."""
        q = _SourceQuery(source)
        stmt = (
            sa.select(sa.func.count())
            .select_from(q.from_)
            .where(sa.or_(_null_order_after(q, position), _ordered_after(q, position)))
        )
        with self._source(source) as conn:
            return int(conn.execute(stmt).scalar_one())

    def read_by_keys(self, source: StreamSource, keys: Sequence[str]) -> dict[str, SourceRow]:
        """The source rows whose key, as text (``ports.record_key_text``), is in ``keys``.

        Keys missing from the result are gone from the source. For a table, each key is
        converted to the key column's type (so an index on it is used) when that conversion
        round-trips to the same text; otherwise, and for a query, ``CAST(key AS VARCHAR)`` is
        compared with the text. IN lists are chunked.
        """
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        q = _SourceQuery(source)
        with self._source(source) as conn:
            convert = self._key_type(conn, source)
            typed: list[Any] = []
            as_text: list[str] = []
            for wanted_key in wanted:
                value = _try_convert(convert, wanted_key)
                if value is not _NO_VALUE:
                    typed.append(value)
                else:
                    as_text.append(wanted_key)
            found: list[SourceRow] = []
            for chunk in chunks(typed):
                found += self._fetch(conn, q.select().where(q.key.in_(_bind_list(chunk))), q)
            key_text = sa.cast(q.key, sa.String())
            for chunk in chunks(as_text):
                found += self._fetch(conn, q.select().where(key_text.in_(_bind_list(chunk))), q)
        wanted_set = set(wanted)
        result: dict[str, SourceRow] = {}
        for row in found:
            text = _key_text_or_none(row.key)
            if text is not None and text in wanted_set:
                result[text] = row
        return result

    def _key_type(self, conn: Connection, source: StreamSource) -> Callable[[str], Any] | None:
        if source.table is None:
            return None
        cache_key = (source.source_url, f"{source.table}\0{source.key}")
        with self._lock:
            if cache_key in self._key_types:
                return self._key_types[cache_key]
        schema, table = _split_table(source.table)
        convert: Callable[[str], Any] | None = None
        for col in sa.inspect(conn).get_columns(table, schema=schema):
            if _same_name(col["name"], source.key, conn.dialect):
                try:
                    convert = _key_converter(col["type"].python_type)
                except NotImplementedError:
                    convert = None
                break
        with self._lock:
            self._key_types[cache_key] = convert
        return convert

    def check_source(self, source: StreamSource) -> None:
        """Raise ``SourceError`` naming the stream and what is missing (table, column), or
        why the source can not be read, so a typo in the config stops before any export."""
        with self._source(source) as conn:
            _check_source(conn, source)

    def missing_keyset_index(self, source: StreamSource) -> str | None:
        """The ``CREATE INDEX`` statement the source's table needs for its keyset reads, or
        None (it has a usable index, or it is a query): see store/indexes.py."""
        from crm_export.store.indexes import missing_keyset_index  # it imports this module

        with self._source(source) as conn:
            return missing_keyset_index(conn, source)


# --------------------------------------------------------------------------------------------
# Errors and checks


def _source_failure(source: StreamSource, exc: sa.exc.SQLAlchemyError) -> NoReturn:
    if is_transient(exc):
        raise TransientError(
            f"stream {source.name!r}: the source database at {redact_url(source.source_url)}"
            f" is unavailable: {error_reason(exc)}"
        ) from exc
    raise SourceError(
        f"stream {source.name!r}: cannot read the source: {error_reason(exc)}"
    ) from exc


def _check_source(conn: Connection, source: StreamSource) -> None:
    q = _SourceQuery(source)
    if source.table is not None:
        schema, table = _split_table(source.table)
        insp = sa.inspect(conn)
        if not (insp.has_table(table, schema=schema) or _is_view(insp, table, schema)):
            raise SourceMissingError(
                f"stream {source.name!r}: table {source.table!r} does not exist"
                f" in {redact_url(source.source_url)}",
                setting="table",
            )
        available = [c["name"] for c in insp.get_columns(table, schema=schema)]
        where = f"table {source.table}"
    else:
        probe: sa.Select[Any] = (
            sa.select(sa.literal_column("*"))
            .select_from(_literal_query(source.query or "").columns().subquery("src"))
            .limit(0)
        )
        available = list(conn.execute(probe).keys())
        where = "the query"
    missing: dict[str, str] = {}
    for name in q.names:
        if any(_same_name(a, name, conn.dialect) for a in available):
            continue
        hint = next((a for a in available if a.casefold() == name.casefold()), None)
        missing[name] = f"column {name!r} does not exist in {where}" + (
            f" (did you mean {hint!r}?)" if hint else ""
        )
    if missing:
        problems = (f"stream {source.name!r}: {p}" for p in missing.values())
        raise SourceMissingError("; ".join(problems), columns=missing)
    # Finally read nothing for real: catches permissions and broken views.
    conn.execute(q.select().limit(0)).all()


def _same_name(actual: str, wanted: str, dialect: sa.Dialect) -> bool:
    # PostgreSQL names are exact (SQLAlchemy quotes any name that is not lower case);
    # SQLite, MySQL and SQL Server compare column names without regard to case.
    if dialect.name == "postgresql":
        return actual == wanted
    return actual.casefold() == wanted.casefold()


def _is_view(insp: sa.Inspector, table: str, schema: str | None) -> bool:
    try:
        return table in insp.get_view_names(schema=schema)
    except NotImplementedError:  # pragma: no cover - every bundled dialect lists views
        return False


def preflight_source(source: StreamSource) -> None:
    """``check_source`` before any state database is opened, on a throwaway engine that
    changes nothing, and never creating a SQLite file that is not there."""
    url = make_url(source.source_url)
    if is_sqlite(source.source_url) and not is_memory_sqlite(source.source_url):
        path = url.database or ""
        if not os.path.exists(path):
            raise SourceMissingError(
                f"stream {source.name!r}: the SQLite file {path} does not exist",
                setting="source_url",
            )
    try:
        engine = create_source_engine(source.source_url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise SourceError(
            f"stream {source.name!r}: cannot use source URL {redact_url(source.source_url)}: {exc}"
        ) from exc
    try:
        with engine.connect() as conn:
            _check_source(conn, source)
    except sa.exc.SQLAlchemyError as exc:
        _source_failure(source, exc)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Source statements


_TEXT_BIND_RE = re.compile(r"(?<![:\w\x5c]):(\w+)(?![:\w])", re.UNICODE)


def _literal_query(query: str) -> sa.TextClause:
    cleaned = query.strip().rstrip(";").rstrip()
    return sa.text(_TEXT_BIND_RE.sub(lambda m: "\\" + m.group(0), cleaned))


def _split_table(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return (schema or None), table


def _bind(value: SourceValue) -> sa.BindParameter[Any]:
    # Untyped on purpose: the value goes back exactly as the driver returned it. A typed bind
    # makes SQLAlchemy add a cast guessed from the Python type (psycopg: "%(x)s::VARCHAR" for
    # a str), and PostgreSQL then refuses "enum_column > varchar"; untyped, psycopg sends a
    # str as "unknown" and the server reads it as the column's type.
    return sa.bindparam(None, value, type_=NullType())


def _bind_list(values: Sequence[Any]) -> sa.BindParameter[Any]:
    return sa.bindparam(None, list(values), expanding=True, type_=NullType())


class _SourceQuery:
    """The FROM clause and columns of one stream's source, with identifiers quoted by
    SQLAlchemy (never formatted into SQL by hand)."""

    def __init__(self, source: StreamSource) -> None:
        self.source = source
        self.names: list[str] = list(dict.fromkeys([source.key, source.order_by, *source.columns]))
        cols: list[sa.ColumnClause[Any]] = [sa.column(n) for n in self.names]
        self.from_: sa.FromClause
        if source.table is not None:
            schema, table = _split_table(source.table)
            # xmin: PostgreSQL's system column, read only by read_late.
            self.from_ = sa.table(table, *cols, sa.column("xmin"), schema=schema)
        elif source.query is not None:
            self.from_ = _literal_query(source.query).columns(*cols).subquery("src")
        else:
            raise SourceError(f"stream {source.name!r}: neither a table nor a query to read")
        self.key = self.from_.c[source.key]
        self.order = self.from_.c[source.order_by]
        self._index = {name: i for i, name in enumerate(self.names)}

    def select(self) -> sa.Select[Any]:
        return sa.select(*(self.from_.c[n] for n in self.names))

    def to_row(self, row: Sequence[Any]) -> SourceRow:
        s = self.source
        return SourceRow(
            key=row[self._index[s.key]],
            order_value=row[self._index[s.order_by]],
            values={c: row[self._index[c]] for c in s.columns},
        )


def _nulls_first(column: sa.ColumnElement[Any], dialect: sa.Dialect) -> Any:
    # NULL keys sort first. SQLite, MySQL and SQL Server already do so (and MySQL has no
    # NULLS FIRST syntax); PostgreSQL and Oracle sort NULL last unless told.
    if dialect.name in ("postgresql", "oracle"):
        return column.nulls_first()
    return column


def _key_after(q: _SourceQuery, key: SourceValue) -> sa.ColumnElement[bool]:
    # Keys sort NULL first, so everything non-NULL comes after a NULL key.
    return q.key.is_not(None) if key is None else q.key > _bind(key)


def _null_order_after(q: _SourceQuery, after: Position | None) -> sa.ColumnElement[bool]:
    """Rows with a NULL order_by that come after ``after`` (they all sort first)."""
    if after is None:
        return q.order.is_(None)
    if after.order_value is None:
        return sa.and_(q.order.is_(None), _key_after(q, after.key))
    return sa.false()


def _ordered_after(q: _SourceQuery, after: Position | None) -> sa.ColumnElement[bool]:
    """Rows with a non-NULL order_by that come after ``after``."""
    if after is None or after.order_value is None:
        return q.order.is_not(None)
    o = after.order_value
    # The portable keyset predicate; the redundant "order >= :o" lets an index on order_by
    # bound the scan, which the OR alone hides from most planners.
    return sa.and_(
        q.order >= _bind(o),
        sa.or_(q.order > _bind(o), sa.and_(q.order == _bind(o), _key_after(q, after.key))),
    )


# --------------------------------------------------------------------------------------------
# Finding rows by key (read_by_keys)


def _key_converter(python_type: type) -> Callable[[str], Any] | None:
    if python_type is str:
        return str
    if python_type is int:
        return int
    if python_type is Decimal:
        return Decimal
    if python_type is float:
        return float
    if python_type is uuid.UUID:
        return uuid.UUID
    if python_type is bytes:
        return lambda text: text.encode("utf-8")
    return None


_NO_VALUE = object()


def _try_convert(convert: Callable[[str], Any] | None, text: str) -> Any:
    if convert is None:
        return _NO_VALUE
    try:
        value = convert(text)
    except (ValueError, TypeError, ArithmeticError):
        return _NO_VALUE
    # Only a lossless conversion may use the typed comparison: " 7" or "007" must not find
    # the row whose key is 7 (its record_key is "7").
    return value if _key_text_or_none(value) == text else _NO_VALUE


def _key_text_or_none(key: SourceValue) -> str | None:
    if key is None:
        return None
    try:
        return record_key_text(key)
    except UnicodeDecodeError:
        return None
