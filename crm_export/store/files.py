"""The files of a SQLite state database on disk, kept private to the user running crm-export.

ExportErrors payloads hold names and email addresses, so the database, its -wal, -shm and
-journal files and the runner lock beside it are created 0600 and any directory created for
them 0700, whatever the umask. SQLite gives the -wal, -shm and -journal files the mode of
the database file (it sets it explicitly, past the umask), so creating that one 0600 before
SQLite opens it is enough. An existing file stays as its owner set it: a warning at start
names it and the fix.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import structlog
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from crm_export.private_files import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    create_private_file,
    make_private_dirs,
)
from crm_export.store.urls import is_memory_sqlite, is_sqlite

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "create_private_file",
    "keep_state_file_private",
    "make_private_dirs",
    "sqlite_state_file",
    "warn_if_readable",
]

log = structlog.get_logger("crm_export.store")

# The files SQLite keeps beside a database while it is open or mid-transaction.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")

_warned: set[tuple[str, int]] = set()
_warned_lock = threading.Lock()


def sqlite_state_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for any other database, an in-memory one,
    or a URI filename (``file:...``), which SQLite resolves itself."""
    if not is_sqlite(url) or is_memory_sqlite(url):
        return None
    database = make_url(url).database or ""
    if not database or database.startswith("file:"):
        return None
    return Path(database)


def keep_state_file_private(engine: Engine, url: str) -> None:
    """For a SQLite state database in a file: warn now if other users can read it, and have
    ``engine`` create it 0600 (when it does not exist yet) just before SQLite opens it."""
    path = sqlite_state_file(url)
    if path is None:
        return
    warn_if_readable(path)

    @event.listens_for(engine, "do_connect")
    def _create_private(*_: object) -> None:
        # Returning None lets SQLAlchemy connect as usual, now to a file that exists.
        create_private_file(path)


def warn_if_readable(database: Path) -> None:
    """Log ``state_file_readable`` for the database file and each of its SQLite sidecars
    that other local users can read, once per file and mode in this process."""
    for path in (database, *(Path(f"{database}{suffix}") for suffix in SQLITE_SIDECARS)):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if not mode & (stat.S_IRGRP | stat.S_IROTH):
            continue
        with _warned_lock:
            if (str(path), mode) in _warned:
                continue
            _warned.add((str(path), mode))
        log.warning(
            "state_file_readable",
            path=str(path),
            mode=f"{mode:04o}",
            detail="other local users can read the state database, whose ExportErrors"
            " rows hold personal data",
            fix=f"chmod 600 {path}",
        )
