"""The SQL store: every SQL statement crm-export runs lives in this module.

``SqlStore`` implements ``ports.Store`` over SQLAlchemy Core. It talks to two kinds of
database:

* the **state database** (SQLite by default, PostgreSQL in production): export runs, stream
  positions and pauses, and the ExportErrors table people query by hand;
* the **source databases** named by each stream's ``source_url`` (any SQLAlchemy URL, possibly
  the state database itself), which are only ever read.

Source rows are read with keyset pagination, one short statement per batch, so neither memory
nor transaction age grows with the size of the source table.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.types import NullType

from crm_export.errors import SourceError, SourceMissingError, TerminalError, TransientError
from crm_export.ports import (
    UNCHANGED,
    BatchAck,
    ErrorStatus,
    OpenError,
    PausedRecord,
    Position,
    RecordFailure,
    RunOutcome,
    SourceRow,
    SourceValue,
    Store,
    StreamSource,
    StreamState,
    record_key_text,
)
from crm_export.store.engines import (
    begin_write,
    create_source_engine,
    create_state_engine,
    error_reason,
    is_transient,
    state_database_errors,
    write_engine,
)
from crm_export.store.positions import (
    decode_value,
    encode_value,
    position_columns,
    position_from_columns,
)
from crm_export.store.schema import export_errors, export_runs, stream_state
from crm_export.store.urls import is_memory_sqlite, is_sqlite, redact_url

__all__ = [
    "IN_CHUNK",
    "AdvisoryRunnerLock",
    "SqlStore",
    "advisory_runner_lock",
    "begin_write",
    "create_source_engine",
    "create_state_engine",
    "decode_value",
    "encode_value",
    "is_memory_sqlite",
    "lock_for_migration",
    "redact_url",
    "state_database_errors",
]

# Bound on IN (...) lists: far below SQLite's and PostgreSQL's parameter limits, and small
# enough that one statement never holds locks for long.
IN_CHUNK = 500
INTERRUPTED_MESSAGE = "runner stopped before the run finished"

# Arbitrary constant naming crm-export's PostgreSQL advisory lock for migrations.
_MIGRATION_LOCK_ID = 0x63726D5F6578  # "crm_ex"


# --------------------------------------------------------------------------------------------
# Locks


def lock_for_migration(conn: Connection) -> None:
    """Serialize concurrent ``db upgrade`` runs (two daemons starting at once).

    SQLite needs nothing: the migration transaction starts with BEGIN IMMEDIATE.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))


# The runner lock's key: (class, object) in PostgreSQL's two-int4 advisory key space. Advisory
# locks are scoped to one database, so this means "one runner per state database".
_RUNNER_LOCK_KEY = (0x63726D, 1)  # "crm"
# Each run in progress holds a session advisory lock (this class, the run id's low 31 bits) on
# a connection of its own, so that a run left 'running' is provably abandoned exactly when
# its lock is free: the server drops it with the connection of a runner that died.
_RUN_LOCK_CLASS = 0x63726E  # "crn"
# How long mark_interrupted_runs waits for the lock of a run whose runner may be dying (the
# server ends a killed client's session within milliseconds) before taking it as alive.
_RUN_LOCK_WAIT = "2s"


def _run_lock_key(run_id: int) -> tuple[int, int]:
    return (_RUN_LOCK_CLASS, run_id & 0x7FFFFFFF)


# libpq settings for the lock's connection: a dead network must fail alive() within about a
# minute (the daemon's heartbeat), not hang for the kernel's TCP timeout.
_LIBPQ_LOCK_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


class AdvisoryRunnerLock:
    """``locks.RunnerLock`` for PostgreSQL: a session advisory lock on a dedicated connection.

    The server releases it when the connection dies, so a standby takes over from a runner
    that crashed or lost its network; ``alive()`` tells the holder it lost the lock.
    """

    def __init__(self, state_url: str) -> None:
        self.description = f"PostgreSQL advisory lock on {redact_url(state_url)}"
        driver = make_url(state_url).get_driver_name()
        connect_args = _LIBPQ_LOCK_ARGS if driver in ("psycopg", "psycopg2") else {}
        # NullPool: the lock's lifetime is exactly its connection's, never a pooled one's.
        self._engine = sa.create_engine(
            state_url, poolclass=sa.pool.NullPool, connect_args=connect_args
        )
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        """Try once, without waiting; True when this process now holds the lock."""
        if self._conn is not None:
            if self.alive():
                return True
            self._drop_connection()
        try:
            # AUTOCOMMIT: the lock is session-level; an open transaction held for days would
            # pin old row versions and stop VACUUM.
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sa.exc.SQLAlchemyError:
            return False
        try:
            got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(*_RUNNER_LOCK_KEY)))
            if got.scalar_one():
                self._conn = conn
                return True
        except sa.exc.SQLAlchemyError:
            pass
        conn.close()
        return False

    def alive(self) -> bool:
        """Still held: the connection answers and the server lists our lock as granted."""
        if self._conn is None:
            return False
        locks = sa.table(
            "pg_locks",
            sa.column("locktype"),
            sa.column("pid"),
            sa.column("classid"),
            sa.column("objid"),
            sa.column("objsubid"),
            sa.column("granted"),
        )
        stmt = sa.select(sa.func.count()).where(
            locks.c.locktype == "advisory",
            locks.c.pid == sa.func.pg_backend_pid(),
            locks.c.classid == _RUNNER_LOCK_KEY[0],
            locks.c.objid == _RUNNER_LOCK_KEY[1],
            locks.c.objsubid == 2,  # the two-int4 key form
            locks.c.granted.is_(True),
        )
        try:
            return bool(self._conn.execute(stmt).scalar_one())
        except sa.exc.SQLAlchemyError:
            return False

    def release(self) -> None:
        if self._conn is not None:
            # If the connection is gone, the lock went with it.
            with suppress(sa.exc.SQLAlchemyError):
                self._conn.execute(sa.select(sa.func.pg_advisory_unlock(*_RUNNER_LOCK_KEY)))
            self._drop_connection()
        self._engine.dispose()

    def _drop_connection(self) -> None:
        assert self._conn is not None
        with suppress(sa.exc.SQLAlchemyError):
            self._conn.close()
        self._conn = None


def advisory_runner_lock(state_url: str) -> AdvisoryRunnerLock:
    """The one-runner lock of a PostgreSQL state database (see ``crm_export.locks``)."""
    return AdvisoryRunnerLock(state_url)


# --------------------------------------------------------------------------------------------
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


# SQLAlchemy's text() reads ":name" as a bind parameter. A user's query is SQL to pass through
# untouched (a literal '10:30', a PostgreSQL '::' cast), so every such colon is escaped with
# the same pattern SQLAlchemy uses to find them (sqlalchemy.sql.elements.TextClause).
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


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
# Reading a source table's key type (read_by_keys)


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


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def _payload_text(payload: Mapping[str, Any] | None) -> str | None:
    if payload is None:
        return None
    return json.dumps(dict(payload), ensure_ascii=False, default=_json_default)


def _runner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------------------------
# The store


class SqlStore:
    """``ports.Store`` over SQLAlchemy Core, plus what the daemon and the operator CLI need.

    One engine for the state database; source engines are created on first use per
    ``source_url`` and cached (a source URL equal to the state URL shares its engine).
    Thread-safe: every method takes its own connection from the pool.
    """

    def __init__(
        self,
        state_url: str,
        *,
        clock: Callable[[], datetime] | None = None,
        runner: str | None = None,
    ) -> None:
        backend = make_url(state_url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise TerminalError(
                f"the state database must be SQLite or PostgreSQL, not {backend}"
                f" ({redact_url(state_url)})"
            )
        self.state_url = state_url
        self._engine = create_state_engine(state_url)
        if is_memory_sqlite(state_url):
            # Nobody else can reach this database to migrate it: it starts at head.
            from crm_export.store import migrations

            migrations.upgrade_engine(self._engine, state_url)
        self._writer = write_engine(self._engine)
        self._sources: dict[str, Engine] = {state_url: self._engine}
        self._key_types: dict[tuple[str, str], Callable[[str], Any] | None] = {}
        self._lock = threading.Lock()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._runner = runner or _runner_name()
        # PostgreSQL: the connections holding the locks of this store's runs in progress.
        self._run_locks: dict[int, Connection] = {}
        self._run_lock_engine: Engine | None = None
        if make_url(state_url).get_backend_name() == "postgresql":
            driver = make_url(state_url).get_driver_name()
            # NullPool: a run's lock lives exactly as long as its own connection.
            self._run_lock_engine = sa.create_engine(
                state_url,
                poolclass=sa.pool.NullPool,
                connect_args=_LIBPQ_LOCK_ARGS if driver in ("psycopg", "psycopg2") else {},
            )

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Dispose every engine (state and sources). The store can not be used afterwards."""
        with self._lock:
            engines = list(self._sources.values())
            self._sources.clear()
            run_locks = list(self._run_locks.values())
            self._run_locks.clear()
        for conn in run_locks:
            with suppress(sa.exc.SQLAlchemyError):
                conn.close()
        if self._run_lock_engine is not None:
            self._run_lock_engine.dispose()
        for engine in {id(e): e for e in [self._engine, *engines]}.values():
            engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return aware datetimes")
        return now.astimezone(UTC)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with state_database_errors(self.state_url), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with state_database_errors(self.state_url), self._writer.begin() as conn:
            yield conn

    # -- runs -------------------------------------------------------------------------------

    def begin_run(self, job_id: str, stream: str) -> int:
        """Record a run as ``running`` and return its id.

        On PostgreSQL the run's lock is taken in the transaction that inserts the row, so no
        other session ever sees the run ``running`` without its lock held.
        """
        insert = export_runs.insert().values(
            job_id=job_id,
            stream=stream,
            started_at=self._now(),
            outcome=RunOutcome.RUNNING.value,
            runner=self._runner,
        )
        if self._run_lock_engine is None:
            with self._write() as conn:
                pk = conn.execute(insert).inserted_primary_key
                assert pk is not None
                return int(pk[0])
        with state_database_errors(self.state_url):
            lock_conn = self._run_lock_engine.connect()
            try:
                with lock_conn.begin():
                    run_id = int(lock_conn.execute(insert.returning(export_runs.c.id)).scalar_one())
                    # Session level: it outlives this transaction, until finish_run or death.
                    lock_conn.execute(sa.select(sa.func.pg_advisory_lock(*_run_lock_key(run_id))))
            except BaseException:
                lock_conn.close()
                raise
        with self._lock:
            self._run_locks[run_id] = lock_conn
        return run_id

    def finish_run(self, run_id: int, outcome: RunOutcome, error: str | None = None) -> None:
        """Close a run with its outcome (and the error text of a failed run)."""
        if outcome is RunOutcome.RUNNING:
            raise ValueError("a run can not finish as 'running'")
        with self._write() as conn:
            result = conn.execute(
                export_runs.update()
                .where(export_runs.c.id == run_id)
                .values(outcome=RunOutcome(outcome).value, finished_at=self._now(), error=error)
            )
            if result.rowcount != 1:
                raise LookupError(f"no export run with id {run_id}")
        # Only after the outcome is committed: nobody may see the run running and unlocked.
        self._release_run_lock(run_id)

    def _release_run_lock(self, run_id: int) -> None:
        with self._lock:
            lock_conn = self._run_locks.pop(run_id, None)
        if lock_conn is not None:
            # Closing the session releases the lock, also when the unlock itself fails.
            with suppress(sa.exc.SQLAlchemyError):
                lock_conn.execute(sa.select(sa.func.pg_advisory_unlock(*_run_lock_key(run_id))))
                lock_conn.commit()
            with suppress(sa.exc.SQLAlchemyError):
                lock_conn.close()

    def mark_interrupted_runs(self) -> int:
        """Mark runs left ``running`` by a runner that died as ``interrupted``.

        Call this while holding the one-runner lock, before this store begins a run (its own
        runs in progress count as abandoned). On SQLite that is the whole proof: the runner's
        file lock can not be lost while its process lives. On PostgreSQL the runner lock can
        be lost to a broken connection while the process goes on, so a run is only marked
        when its own lock is free: its runner is gone. Returns how many runs were marked.
        """
        for run_id in list(self._run_locks):
            self._release_run_lock(run_id)
        runs = export_runs
        with self._write() as conn:
            running = [
                int(r[0])
                for r in conn.execute(
                    sa.select(runs.c.id).where(runs.c.outcome == RunOutcome.RUNNING.value)
                )
            ]
            if conn.dialect.name == "postgresql":
                running = self._abandoned(conn, running)
            marked = 0
            for chunk in _chunks(running):
                result = conn.execute(
                    runs.update()
                    .where(runs.c.id.in_(chunk), runs.c.outcome == RunOutcome.RUNNING.value)
                    .values(
                        outcome=RunOutcome.INTERRUPTED.value,
                        finished_at=self._now(),
                        error=INTERRUPTED_MESSAGE,
                    )
                )
                marked += int(result.rowcount)
            return marked

    @staticmethod
    def _abandoned(conn: Connection, run_ids: Sequence[int]) -> list[int]:
        """The runs among ``run_ids`` whose lock this transaction could take: nobody holds it,
        so their runner is dead (and, the lock now ours until commit, stays so)."""
        if not run_ids:
            return []
        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{_RUN_LOCK_WAIT}'"))
        dead = []
        for run_id in run_ids:
            try:
                with conn.begin_nested():
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(*_run_lock_key(run_id))))
            except sa.exc.OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                    raise
                continue  # its runner is alive: the run is still its own
            dead.append(run_id)
        # The wait was for run locks only; the update that follows waits as usual.
        conn.execute(sa.text("SET LOCAL lock_timeout = DEFAULT"))
        return dead

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """One export_runs row as a dict, or None."""
        with self._read() as conn:
            row = conn.execute(export_runs.select().where(export_runs.c.id == run_id)).first()
            return dict(row._mapping) if row is not None else None

    def list_runs(self, stream: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first, as dicts of every export_runs column."""
        stmt = export_runs.select().order_by(export_runs.c.id.desc()).limit(limit)
        if stream is not None:
            stmt = stmt.where(export_runs.c.stream == stream)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    # -- stream state -----------------------------------------------------------------------

    def load_state(self, stream: str) -> StreamState:
        with self._read() as conn:
            row = conn.execute(stream_state.select().where(stream_state.c.stream == stream)).first()
        if row is None:
            return StreamState(stream=stream)
        return self._state_from_row(row._mapping)

    @staticmethod
    def _state_from_row(m: Mapping[Any, Any]) -> StreamState:
        position = position_from_columns(m["position_order"], m["position_key"])
        paused = None
        if m["paused_record_key"] is not None:
            paused = PausedRecord(
                record_key=m["paused_record_key"],
                since=m["paused_since"],
                error_code=m["paused_error_code"],
                error_message=m["paused_error_message"],
            )
        return StreamState(
            stream=m["stream"],
            position=position,
            paused=paused,
            source_snapshot=m["source_snapshot"],
        )

    def clear_pause(self, stream: str) -> bool:
        """Release a stream's pause (operator ``resume``). True if it was paused."""
        with self._write() as conn:
            result = conn.execute(
                stream_state.update()
                .where(stream_state.c.stream == stream)
                .where(stream_state.c.paused_record_key.is_not(None))
                .values({**_pause_values(None), "updated_at": self._now()})
            )
            return result.rowcount == 1

    # -- source reading ---------------------------------------------------------------------

    def _source_engine(self, source: StreamSource) -> Engine:
        url = source.source_url
        with self._lock:
            engine = self._sources.get(url)
            if engine is None:
                try:
                    engine = create_source_engine(url)
                except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
                    raise SourceError(
                        f"stream {source.name!r}: cannot use source URL {redact_url(url)}: {exc}"
                    ) from exc
                self._sources[url] = engine
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
            for chunk in _chunks(typed):
                found += self._fetch(conn, q.select().where(q.key.in_(_bind_list(chunk))), q)
            key_text = sa.cast(q.key, sa.String())
            for chunk in _chunks(as_text):
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

    # -- ExportErrors -----------------------------------------------------------------------

    def open_errors(self, stream: str, after_id: int = 0, limit: int = 200) -> list[OpenError]:
        """Open ExportErrors rows of a stream with id > ``after_id``, by id (the caller pages
        with the last id it got)."""
        t = export_errors
        stmt = (
            sa.select(t.c.id, t.c.stream, t.c.record_key, t.c.error_code, t.c.attempts)
            .where(t.c.stream == stream, t.c.resolved_at.is_(None), t.c.id > after_id)
            .order_by(t.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [
                OpenError(id=r[0], stream=r[1], record_key=r[2], error_code=r[3], attempts=r[4])
                for r in conn.execute(stmt)
            ]

    def list_errors(
        self,
        stream: str | None = None,
        code: str | None = None,
        include_resolved: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """ExportErrors rows as dicts of every column, oldest first; open ones unless
        ``include_resolved``."""
        t = export_errors
        stmt = t.select().order_by(t.c.id)
        if stream is not None:
            stmt = stmt.where(t.c.stream == stream)
        if code is not None:
            stmt = stmt.where(t.c.error_code == code)
        if not include_resolved:
            stmt = stmt.where(t.c.resolved_at.is_(None))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def stream_overview(self) -> list[dict[str, Any]]:
        """One dict per stream known to the state database, sorted by name:

        ``stream``, ``position`` (Position | None), ``paused`` (PausedRecord | None),
        ``updated_at``, ``last_run`` (dict of the newest export_runs row, or None) and
        ``open_errors`` (count).
        """
        r, e = export_runs, export_errors
        last_ids = sa.select(sa.func.max(r.c.id)).group_by(r.c.stream).scalar_subquery()
        with self._read() as conn:
            state_rows = [row._mapping for row in conn.execute(stream_state.select())]
            last_runs = {
                row.stream: dict(row._mapping)
                for row in conn.execute(r.select().where(r.c.id.in_(last_ids)))
            }
            open_counts = {
                row[0]: int(row[1])
                for row in conn.execute(
                    sa.select(e.c.stream, sa.func.count())
                    .where(e.c.resolved_at.is_(None))
                    .group_by(e.c.stream)
                )
            }
        states = {m["stream"]: self._state_from_row(m) for m in state_rows}
        updated = {m["stream"]: m["updated_at"] for m in state_rows}
        overview = []
        for name in sorted(set(states) | set(last_runs) | set(open_counts)):
            state = states.get(name, StreamState(stream=name))
            overview.append(
                {
                    "stream": name,
                    "position": state.position,
                    "paused": state.paused,
                    "updated_at": updated.get(name),
                    "last_run": last_runs.get(name),
                    "open_errors": open_counts.get(name, 0),
                }
            )
        return overview

    # -- the hot path -----------------------------------------------------------------------

    def acknowledge(self, ack: BatchAck) -> None:
        """Commit everything one batch changed, in one transaction (all or nothing):

        the stream's position and pause, the ExportErrors episodes (closed for
        ``resolved_keys`` and ``source_deleted_keys``, then opened or bumped for
        ``failures``; a key in both gets its old episode closed and a new one opened, so the
        failure stays visible), and the counters added to the run's row.
        """
        now = self._now()
        with self._write() as conn:
            self._save_state(conn, ack, now)
            self._close_errors(conn, ack, ack.resolved_keys, ErrorStatus.RESOLVED, now)
            self._close_errors(conn, ack, ack.source_deleted_keys, ErrorStatus.SOURCE_DELETED, now)
            self._record_failures(conn, ack, now)
            self._add_counters(conn, ack)

    def _save_state(self, conn: Connection, ack: BatchAck, now: datetime) -> None:
        changes: dict[str, Any] = {}
        if ack.position is not UNCHANGED:
            changes.update(position_columns(ack.position))
        if ack.pause is not UNCHANGED:
            changes.update(_pause_values(ack.pause))
        if ack.source_snapshot is not UNCHANGED:
            changes["source_snapshot"] = ack.source_snapshot
        if not changes:
            return
        changes["updated_at"] = now
        insert = _upsert(conn, stream_state).values(stream=ack.stream, **changes)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[stream_state.c.stream],
                set_={name: insert.excluded[name] for name in changes},
            )
        )

    @staticmethod
    def _close_errors(
        conn: Connection, ack: BatchAck, keys: Sequence[str], status: ErrorStatus, now: datetime
    ) -> None:
        t = export_errors
        unique = list(dict.fromkeys(keys))
        for chunk in _chunks(unique):
            conn.execute(
                t.update()
                .where(t.c.stream == ack.stream)
                .where(t.c.resolved_at.is_(None))
                .where(t.c.record_key.in_(chunk))
                .values(status=status.value, resolved_at=now, run_id=ack.run_id)
            )

    @staticmethod
    def _record_failures(conn: Connection, ack: BatchAck, now: datetime) -> None:
        if not ack.failures:
            return
        # One statement row per record: a record failing twice in one batch is one episode
        # with two attempts, its latest error kept.
        latest: dict[str, RecordFailure] = {}
        counts: dict[str, int] = {}
        for failure in ack.failures:
            latest[failure.record_key] = failure
            counts[failure.record_key] = counts.get(failure.record_key, 0) + 1
        rows = [
            {
                "stream": ack.stream,
                "record_key": key,
                "sobject": f.sobject,
                "external_id": f.external_id,
                "error_code": f.error.code,
                "error_message": f.error.message,
                "error_fields": ",".join(f.error.fields) or None,
                "payload": _payload_text(f.payload),
                "attempts": counts[key],
                "first_failed_at": now,
                "last_failed_at": now,
                "resolved_at": None,
                "status": ErrorStatus.OPEN.value,
                "run_id": ack.run_id,
            }
            for key, f in latest.items()
        ]
        t = export_errors
        insert = _upsert(conn, t)
        # The conflict target is the partial unique index on open rows: an open episode is
        # bumped, anything else (no row, or only closed ones) opens a new episode.
        stmt = insert.on_conflict_do_update(
            index_elements=[t.c.stream, t.c.record_key],
            index_where=t.c.resolved_at.is_(None),
            set_={
                "attempts": t.c.attempts + insert.excluded.attempts,
                "last_failed_at": insert.excluded.last_failed_at,
                "sobject": insert.excluded.sobject,
                "external_id": insert.excluded.external_id,
                "error_code": insert.excluded.error_code,
                "error_message": insert.excluded.error_message,
                "error_fields": insert.excluded.error_fields,
                "payload": insert.excluded.payload,
                "run_id": insert.excluded.run_id,
            },
        )
        for chunk in _chunks(rows):
            conn.execute(stmt, list(chunk))

    @staticmethod
    def _add_counters(conn: Connection, ack: BatchAck) -> None:
        r = export_runs
        result = conn.execute(
            r.update()
            .where(r.c.id == ack.run_id)
            .values(
                records_read=r.c.records_read + ack.read,
                records_exported=r.c.records_exported + ack.exported,
                records_failed=r.c.records_failed + ack.failed,
                records_skipped=r.c.records_skipped + ack.skipped,
                api_calls=r.c.api_calls + ack.api_calls,
            )
        )
        if result.rowcount != 1:
            # Raising here rolls back the whole batch: nothing is recorded against a run
            # that does not exist.
            raise LookupError(f"no export run with id {ack.run_id}")


# --------------------------------------------------------------------------------------------
# Helpers of SqlStore

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


def _pause_values(pause: PausedRecord | None) -> dict[str, Any]:
    if pause is None:
        return {
            "paused_record_key": None,
            "paused_since": None,
            "paused_error_code": None,
            "paused_error_message": None,
        }
    return {
        "paused_record_key": pause.record_key,
        "paused_since": pause.since,
        "paused_error_code": pause.error_code,
        "paused_error_message": pause.error_message,
    }


def _upsert(conn: Connection, table: sa.Table) -> pg_dialect.Insert | sqlite_dialect.Insert:
    # Both supported state databases speak INSERT ... ON CONFLICT (SQLite >= 3.24).
    if conn.dialect.name == "postgresql":
        return pg_dialect.insert(table)
    return sqlite_dialect.insert(table)


if TYPE_CHECKING:

    def _conforms(store: SqlStore) -> Store:
        # mypy proves SqlStore implements the port.
        return store
