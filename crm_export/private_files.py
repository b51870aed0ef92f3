"""Files that hold record data (names, emails) are created readable by their owner only.

Under the usual umask 022 a plain ``open()`` makes them 0644: readable by every local user.
Mode 0600 is asked for at creation (no window in which another user could open the file),
and set again on a file that already existed with a looser mode.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def open_private(path: str | os.PathLike[str], *, newline: str | None = None) -> IO[str]:
    """``open(path, "w")`` for text, with the file made 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "w", encoding="utf-8", newline=newline)


def create_private(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists (an existing file is left as it is);
    a missing parent directory is created 0700."""
    if not path.parent.exists():
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    os.close(fd)


def readable_by_others(path: Path) -> bool:
    """True when a group or other user may read ``path``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))
