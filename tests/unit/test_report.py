from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest

from crm_export.report import guard_formula, operator_queries, to_json, write_csv


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1 555", "'+1 555"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("Smith", "Smith"),
        ("", ""),
        (3, 3),
        (None, None),
    ],
)
def test_formula_guard(value: object, written: object) -> None:
    assert guard_formula(value) == written


def test_csv_guards_every_cell_and_keeps_json_raw() -> None:
    rows = [
        {
            "record_key": "=cmd|' /C calc'!A0",
            "error_message": "Email: invalid email address: @x",
            "attempts": 2,
            "first_failed_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        }
    ]
    out = io.StringIO()
    write_csv(rows, out, ["record_key", "error_message", "attempts", "first_failed_at"])
    [header, line] = list(csv.reader(io.StringIO(out.getvalue())))
    assert header == ["record_key", "error_message", "attempts", "first_failed_at"]
    assert line == [
        "'=cmd|' /C calc'!A0",
        "Email: invalid email address: @x",
        "2",
        "2026-01-02T03:04:05+00:00",
    ]
    assert json.loads(to_json(rows))[0]["record_key"] == "=cmd|' /C calc'!A0"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_operator_queries_cover_the_first_questions(dialect: str) -> None:
    text = operator_queries(dialect)
    for words in ("Open errors by code", "oldest open error", "more than 3 days", "failed today"):
        assert words in text
    assert "FROM ExportErrors" in text
