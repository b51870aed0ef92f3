"""Files that hold record data (names, emails) are created readable by their owner only.

Under the usual umask 022 a plain ``open()`` makes them 0644: readable by every local user.
Mode 0600 (directories 0700) is asked for at creation, so there is no window in which another
user could open the file, and set again past the umask. Used for ``errors --csv``, the
sandbox's ``--data`` file and, through ``crm_export.store.files``, the SQLite state database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def open_private(path: str | os.PathLike[str], *, newline: str | None = None) -> IO[str]:
    """``open(path, "w")`` for text, with the file 0600 (an existing file's mode is fixed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "w", encoding="utf-8", newline=newline)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist (SQLite takes an empty file for a
    new database). An existing file is left as its owner set it; a missing directory is left
    for the caller's own open to report."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except (FileExistsError, FileNotFoundError, NotADirectoryError):
        return
    try:
        # Umask-independent, as SQLite's modes for its -wal, -shm and -journal files.
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents 0700; existing ones are left alone."""
    missing: list[Path] = []
    while not directory.exists() and directory.parent != directory:
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        # exist_ok: another process may make it first. The umask can only take bits away.
        path.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
