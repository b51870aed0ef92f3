"""How the operator commands (`status`, `errors`) present state: tables, JSON and CSV.

Pure functions over plain dicts; the commands fetch the rows from the store.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from importlib import resources
from typing import IO, Any

# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def guard_formula(value: Any) -> Any:
    """Prefix ``'`` to text a spreadsheet would run as a formula; other values pass through."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def write_csv(rows: Sequence[Mapping[str, Any]], out: IO[str], columns: Sequence[str]) -> None:
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([guard_formula(_text(row.get(c))) for c in columns])


def _text(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def to_json(value: Any) -> str:
    return json.dumps(value, default=_plain, indent=2, sort_keys=True)


def render_table(
    title: str,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    out: IO[str],
) -> None:
    """A table for a person at a terminal; tab-separated values anywhere else.

    A terminal gets a rich table as wide as the terminal (long cells fold). A pipe or a file
    gets one header line and one line per row, never wrapped, so ``grep``, ``cut`` and
    ``awk`` see whole rows (a fixed-width table there wrapped headers at 100 columns).
    """
    if not out.isatty():
        write_tsv(rows, out, columns)
        return
    # Only a terminal pays for rich's tables (every command imports this module).
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(_plain(row.get(c))) for c in columns))
    Console(file=out).print(table)


# A tab, a line break or a backslash inside a value, as PostgreSQL's COPY text format writes them.
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def write_tsv(rows: Iterable[Mapping[str, Any]], out: IO[str], columns: Sequence[str]) -> None:
    """A header line, then a line per row; NULL is an empty field."""
    out.write("\t".join(columns) + "\n")
    for row in rows:
        out.write("\t".join(_tsv_field(row.get(c)) for c in columns) + "\n")


def _tsv_field(value: Any) -> str:
    value = _text(value)
    return "" if value is None else str(value).translate(_TSV_ESCAPES)


def operator_queries(dialect: str) -> str:
    name = "postgresql" if dialect.startswith("postgresql") else "sqlite"
    sql = resources.files("crm_export.store") / "sql"
    return (sql / f"operator_queries.{name}.sql").read_text()
