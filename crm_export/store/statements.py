"""Pieces every statement of the store uses: bounded IN lists and the dialect's upsert."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

__all__ = ["IN_CHUNK", "chunks", "upsert"]

# Bound on IN (...) lists: far below SQLite's and PostgreSQL's parameter limits, and small
# enough that one statement never holds locks for long.
IN_CHUNK = 500


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def upsert(conn: Connection, table: sa.Table) -> pg_dialect.Insert | sqlite_dialect.Insert:
    # Both supported state databases speak INSERT ... ON CONFLICT (SQLite >= 3.24).
    if conn.dialect.name == "postgresql":
        return pg_dialect.insert(table)
    return sqlite_dialect.insert(table)
