"""One active runner per state database.

SQLite deployments lock a file beside the database; PostgreSQL ones hold a session advisory
lock on a dedicated connection (see ``SqlStore.advisory_runner_lock``). Either is released by
the operating system or the server when the holder dies, so a standby can take over.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Protocol

from filelock import FileLock, Timeout
from sqlalchemy.engine import make_url

from crm_export.errors import TerminalError
from crm_export.store.urls import is_memory_sqlite, is_sqlite


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
        self._lock = FileLock(str(path), timeout=0, thread_local=False)

    def acquire(self) -> bool:
        try:
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
    if is_memory_sqlite(state_url):
        return NoLock()
    if is_sqlite(state_url):
        database = make_url(state_url).database or ""
        return FileRunnerLock(Path(database).resolve().with_suffix(".runner.lock"))
    from crm_export.store import advisory_runner_lock

    return advisory_runner_lock(state_url)
