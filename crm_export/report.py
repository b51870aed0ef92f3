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

from rich.console import Console
from rich.table import Table

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
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(_plain(row.get(c))) for c in columns))
    Console(file=out, width=max(100, Console(file=out).width)).print(table)


def operator_queries(dialect: str) -> str:
    name = "postgresql" if dialect.startswith("postgresql") else "sqlite"
    sql = resources.files("crm_export.store") / "sql"
    return (sql / f"operator_queries.{name}.sql").read_text()
