"""Engines of the state and the source databases, and what their errors mean.

The state database is written by every runner and read by operators at a terminal, so
SQLite is set up for that here (WAL, a busy timeout, BEGIN IMMEDIATE for writers). A source
database belongs to someone else: it is only read, and its journal mode is left alone.
Errors from either are classified here too: the retry policy reads the exception class.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from time import monotonic, sleep
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from crm_export.errors import TerminalError, TransientError
from crm_export.store.files import keep_state_file_private
from crm_export.store.urls import is_memory_sqlite, is_sqlite, redact_url

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "StateDatabase",
    "begin_write",
    "create_source_engine",
    "create_state_engine",
    "error_reason",
    "is_transient",
    "state_database_errors",
    "write_engine",
]

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Execution option marking a connection that will write: on SQLite its transaction starts
# with BEGIN IMMEDIATE (see _configure_sqlite).
_WRITE_OPTION = "crm_export_write"


def _decode_sqlite_text(data: bytes) -> str | bytes:
    # SQLite does not check that TEXT is UTF-8. The default text_factory would raise in the
    # middle of fetching a batch; returning the raw bytes lets the core reject that one record.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _enable_wal(dbapi_connection: sqlite3.Connection) -> None:
    """WAL: readers (crm-export status, sqlite3 at a terminal) never block the runner.

    The mode is stored in the file, so this only changes something on a new database. That
    change needs an exclusive lock, and SQLite reports a clash with another connection doing
    the same (two runners starting on a new file) as "locked" at once, without its busy
    handler: so wait and retry here, for up to the busy timeout.
    """
    deadline = monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.01
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or monotonic() + pause > deadline:
                raise
        sleep(pause)
        pause = min(pause * 2, 0.5)


def _configure_sqlite(engine: Engine, *, state: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.text_factory = _decode_sqlite_text
        if not state:
            # A source database belongs to someone else: wait for their writers, change
            # nothing about how the file is journaled.
            dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            return
        # Hand transaction control to SQLAlchemy (the documented recipe): pysqlite's own
        # implicit BEGIN is DEFERRED and skipped for DDL, so two writers could each start
        # reading, then deadlock upgrading their locks, and migrations would not be atomic.
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(dbapi_connection)
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    if not state:
        return

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock up front (waiting up to busy_timeout), instead of
        # failing with SQLITE_BUSY when it first writes after having read.
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def create_state_engine(url: str) -> Engine:
    """An engine for the state database, SQLite set up for concurrent use (WAL, busy timeout,
    foreign keys, BEGIN IMMEDIATE for writers) and private files (see ``files``). Use
    ``begin_write`` for write transactions."""
    if is_memory_sqlite(url):
        # One connection shared by every thread, or each would see its own empty database.
        engine = sa.create_engine(
            url, poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        )
        _configure_sqlite(engine, state=True)
        return engine
    if is_sqlite(url):
        engine = sa.create_engine(url)
        _configure_sqlite(engine, state=True)
        keep_state_file_private(engine, url)
        return engine
    # pre_ping: a daemon outlives database restarts; a dead pooled connection is replaced
    # instead of failing the next batch.
    return sa.create_engine(url, pool_pre_ping=True)


def create_source_engine(url: str) -> Engine:
    """An engine for reading a source database (never written to)."""
    if is_sqlite(url):
        engine = sa.create_engine(url)
        _configure_sqlite(engine, state=False)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def write_engine(engine: Engine) -> Engine:
    """The state engine as a writer: each transaction it begins is BEGIN IMMEDIATE on SQLite."""
    return engine.execution_options(**{_WRITE_OPTION: True})


def begin_write(engine: Engine) -> AbstractContextManager[Connection]:
    """A write transaction on a state engine (BEGIN IMMEDIATE on SQLite), committed on exit."""
    return write_engine(engine).begin()


# --------------------------------------------------------------------------------------------
# Error classification: the retry policy reads the exception class.

# SQLSTATE classes that may go away by themselves: connection exception, insufficient
# resources, operator intervention (e.g. admin shutdown), transaction rollback (deadlock).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "40")
_TRANSIENT_SQLSTATES = ("55P03",)  # lock_not_available


def is_transient(exc: sa.exc.SQLAlchemyError) -> bool:
    if isinstance(exc, sa.exc.DisconnectionError):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        # SQLite reports a missing table as OperationalError too; only a lock is transient.
        text = str(orig).lower()
        return "locked" in text or "busy" in text
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES
    # A driver-level OperationalError without SQLSTATE: refused connection, timeout.
    return isinstance(exc, sa.exc.OperationalError)


def error_reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def state_database_errors(url: str) -> Iterator[None]:
    """Turn an unreachable or busy state database into a ``TransientError`` naming it.

    Anything else (a constraint violation is a bug) propagates unchanged.
    """
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        if is_transient(exc):
            raise TransientError(
                f"the state database at {redact_url(url)} is unavailable: {error_reason(exc)}"
            ) from exc
        if isinstance(exc.__cause__, sqlite3.OperationalError) and "unable to open" in str(exc):
            # A missing directory or no permission: a person has to fix the path.
            raise TerminalError(
                f"cannot open the state database at {redact_url(url)}: {error_reason(exc)}"
            ) from exc
        raise


# --------------------------------------------------------------------------------------------
# The state database as the store's parts use it


class StateDatabase:
    """The state engine with its URL and the store's clock: read and write transactions
    that name the database (password masked) when it is unreachable or busy."""

    def __init__(
        self, url: str, engine: Engine, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.url = url
        self.engine = engine
        self._writer = write_engine(engine)
        self._clock = clock or (lambda: datetime.now(UTC))

    def now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return aware datetimes")
        return now.astimezone(UTC)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with state_database_errors(self.url), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with state_database_errors(self.url), self._writer.begin() as conn:
            yield conn
