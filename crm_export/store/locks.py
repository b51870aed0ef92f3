"""Locks: one active runner per state database, one owner per run, one migration at a time.

SQLite deployments lock a file beside the database; PostgreSQL ones hold a session advisory
lock on a dedicated connection. Either is released by the operating system or the server
when the holder dies, so a standby can take over. On PostgreSQL each run in progress also
holds a lock of its own, which is how a run left ``running`` is proved abandoned.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from filelock import FileLock, Timeout
from sqlalchemy.engine import Connection, Engine, make_url

from crm_export.errors import TerminalError
from crm_export.store.files import PRIVATE_FILE_MODE, make_private_dirs
from crm_export.store.urls import is_memory_sqlite, is_sqlite, redact_url

__all__ = [
    "AdvisoryRunnerLock",
    "FileRunnerLock",
    "NoLock",
    "RunLocks",
    "RunnerLock",
    "advisory_runner_lock",
    "holder_id",
    "lock_for_migration",
    "runner_lock",
]

# The keys of crm-export's PostgreSQL advisory locks. Advisory locks are scoped to one
# database, so each means "... of this state database".
# Migrations: one bigint key, taken for the migration's transaction.
_MIGRATION_LOCK_ID = 0x63726D5F6578  # "crm_ex"
# The runner lock: (class, object) in the two-int4 key space.
_RUNNER_LOCK_KEY = (0x63726D, 1)  # "crm"
# Each run in progress holds a session advisory lock (this class, the run id's low 31 bits) on
# a connection of its own, so that a run left 'running' is provably abandoned exactly when
# its lock is free: the server drops it with the connection of a runner that died.
_RUN_LOCK_CLASS = 0x63726E  # "crn"
# How long mark_interrupted_runs waits for the lock of a run whose runner may be dying (the
# server ends a killed client's session within milliseconds) before taking it as alive.
_RUN_LOCK_WAIT = "2s"

# libpq settings for a lock's connection: a dead network must fail alive() within about a
# minute (the daemon's heartbeat), not hang for the kernel's TCP timeout.
_LIBPQ_LOCK_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def _run_lock_key(run_id: int) -> tuple[int, int]:
    return (_RUN_LOCK_CLASS, run_id & 0x7FFFFFFF)


def _lock_engine(state_url: str) -> Engine:
    driver = make_url(state_url).get_driver_name()
    connect_args = _LIBPQ_LOCK_ARGS if driver in ("psycopg", "psycopg2") else {}
    # NullPool: a lock's lifetime is exactly its connection's, never a pooled one's.
    return sa.create_engine(state_url, poolclass=sa.pool.NullPool, connect_args=connect_args)


# --------------------------------------------------------------------------------------------
# The runner lock


class RunnerLock(Protocol):
    description: str

    def acquire(self) -> bool:
        """Try once, without waiting; True when this process now holds the lock."""

    def alive(self) -> bool:
        """Still held (a PostgreSQL lock dies with its connection)."""

    def release(self) -> None: ...


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class FileRunnerLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file lock {path}"
        # Not thread-local (filelock's default): the heartbeat checks alive() from its own
        # thread, and a thread-local lock looks unheld there, which would stop the daemon.
        # 0600 whatever the umask: it sits beside the state database, private like it.
        self._lock = FileLock(str(path), timeout=0, thread_local=False, mode=PRIVATE_FILE_MODE)

    def acquire(self) -> bool:
        try:
            # filelock would create a missing directory with the umask's mode; this one is
            # for the state database too.
            make_private_dirs(self.path.parent)
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        except OSError as exc:
            raise TerminalError(
                f"cannot create the runner lock file {self.path} beside the SQLite state "
                f"database: {exc.strerror or exc}. Check that its directory exists and is "
                "writable."
            ) from exc
        return True

    def alive(self) -> bool:
        return self._lock.is_locked

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)


class NoLock:
    """In-memory SQLite: no other process can share it."""

    description = "no lock (in-memory database)"

    def acquire(self) -> bool:
        return True

    def alive(self) -> bool:
        return True

    def release(self) -> None:
        return None


def runner_lock(state_url: str) -> RunnerLock:
    """The one-runner lock of the state database at ``state_url``."""
    if is_memory_sqlite(state_url):
        return NoLock()
    if is_sqlite(state_url):
        database = make_url(state_url).database or ""
        return FileRunnerLock(Path(database).resolve().with_suffix(".runner.lock"))
    return advisory_runner_lock(state_url)


class AdvisoryRunnerLock:
    """``RunnerLock`` for PostgreSQL: a session advisory lock on a dedicated connection.

    The server releases it when the connection dies, so a standby takes over from a runner
    that crashed or lost its network; ``alive()`` tells the holder it lost the lock.
    """

    def __init__(self, state_url: str) -> None:
        self.description = f"PostgreSQL advisory lock on {redact_url(state_url)}"
        self._engine = _lock_engine(state_url)
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
    """The one-runner lock of a PostgreSQL state database."""
    return AdvisoryRunnerLock(state_url)


# --------------------------------------------------------------------------------------------
# Migrations


def lock_for_migration(conn: Connection) -> None:
    """Serialize concurrent ``db upgrade`` runs (two daemons starting at once).

    SQLite needs nothing: the migration transaction starts with BEGIN IMMEDIATE.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))


# --------------------------------------------------------------------------------------------
# Run locks (PostgreSQL)


class RunLocks:
    """The locks of one store's runs in progress, each on a connection of its own."""

    def __init__(self, state_url: str) -> None:
        self._engine = _lock_engine(state_url)
        self._held: dict[int, Connection] = {}
        self._mutex = threading.Lock()

    def begin_locked(self, insert_run: Callable[[Connection], int]) -> int:
        """Insert a run (``insert_run`` returns its id) and take its lock, in one transaction,
        so that no other session ever sees the run ``running`` without its lock held."""
        conn = self._engine.connect()
        try:
            with conn.begin():
                run_id = insert_run(conn)
                # Session level: it outlives this transaction, until release or death.
                conn.execute(sa.select(sa.func.pg_advisory_lock(*_run_lock_key(run_id))))
        except BaseException:
            conn.close()
            raise
        with self._mutex:
            self._held[run_id] = conn
        return run_id

    def release(self, run_id: int) -> None:
        with self._mutex:
            conn = self._held.pop(run_id, None)
        if conn is not None:
            # Closing the session releases the lock, also when the unlock itself fails.
            with suppress(sa.exc.SQLAlchemyError):
                conn.execute(sa.select(sa.func.pg_advisory_unlock(*_run_lock_key(run_id))))
                conn.commit()
            with suppress(sa.exc.SQLAlchemyError):
                conn.close()

    def release_all(self) -> None:
        with self._mutex:
            run_ids = list(self._held)
        for run_id in run_ids:
            self.release(run_id)

    def close(self) -> None:
        with self._mutex:
            held = list(self._held.values())
            self._held.clear()
        for conn in held:
            with suppress(sa.exc.SQLAlchemyError):
                conn.close()
        self._engine.dispose()

    @staticmethod
    def abandoned(conn: Connection, run_ids: Sequence[int]) -> list[int]:
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
