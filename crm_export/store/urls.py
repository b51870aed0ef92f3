"""Database URLs: how one may be shown, and what kind of database it names.

Only ``make_url`` here, no engine and no driver: the config module imports this to check
and show URLs long before any database is opened.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["is_memory_sqlite", "is_sqlite", "redact_url"]


def redact_url(url: str) -> str:
    """The URL as it may appear in messages and logs: the password is masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def is_sqlite(url: str) -> bool:
    """A SQLite database, in a file or in memory."""
    return make_url(url).get_backend_name() == "sqlite"


def is_memory_sqlite(url: str) -> bool:
    """``sqlite://``, ``sqlite:///:memory:`` or a URI filename with ``?mode=memory``: a
    database that lives as long as its engine."""
    sa_url = make_url(url)
    database = sa_url.database or ""
    return sa_url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or sa_url.query.get("mode") == "memory"
    )
