"""The lookback window behind a position: its bound for each type of order value, what a
lookback set for the wrong type says, and the core sending the late rows it finds."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from crm_export.export import Exporter, ExportPolicy, Lookback, StreamPlan
from crm_export.export.lookback import LookbackError, mismatch, window_start
from crm_export.mapping import FieldMap
from crm_export.ports import RunOutcome, SourceRow, StreamSource
from crm_export.testing import FakeClock, InMemorySink, InMemoryStore

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SECONDS = Lookback(seconds=600)
ROWS = Lookback(rows=1000)
DEFAULT = Lookback(seconds=600, rows=1000)


@pytest.mark.parametrize(
    ("value", "lookback", "start"),
    [
        (T0, SECONDS, T0 - timedelta(minutes=10)),
        (datetime(2026, 1, 1, 12, 0), DEFAULT, datetime(2026, 1, 1, 11, 50)),
        (date(2026, 1, 2), SECONDS, date(2026, 1, 1)),
        (date(2026, 1, 2), Lookback(seconds=86_400 * 2), date(2025, 12, 31)),
        (5000, ROWS, 4000),
        (5000, DEFAULT, 4000),
        (Decimal("5000"), ROWS, Decimal("4000")),
        # SQLite keeps timestamps as text: the bound is text, cut to the second, so it sorts
        # at or before every value of the window, fractions and offsets included.
        ("2026-01-01 12:00:00", SECONDS, "2026-01-01 11:50:00"),
        ("2026-01-01T12:00:00.250+00:00", SECONDS, "2026-01-01T11:50:00"),
        ("2026-01-01", SECONDS, "2025-12-31"),
        # No distance to measure: no window (a default lookback does not apply).
        ("ABC-17", DEFAULT, None),
        (1.5, DEFAULT, None),
        (True, DEFAULT, None),
        (T0, ROWS, None),
        (T0, Lookback(), None),
    ],
)
def test_window_start(value: object, lookback: Lookback, start: object) -> None:
    assert window_start(value, lookback, "updated_at") == start


def test_the_text_bound_sorts_before_every_value_in_the_window() -> None:
    start = window_start("2026-01-01 12:00:00.999", SECONDS, "updated_at")
    for inside in ("2026-01-01 11:50:00", "2026-01-01 11:50:00.001", "2026-01-01 11:59:59.5"):
        assert start <= inside


@pytest.mark.parametrize(
    ("value", "lookback", "key", "words"),
    [
        (42, Lookback(seconds=600, strict=True), "lookback_seconds", "use lookback_rows"),
        ("ABC-1", Lookback(seconds=600, strict=True), "lookback_seconds", "str ('ABC-1')"),
        (T0, Lookback(rows=10, strict=True), "lookback_rows", "use lookback_seconds"),
        ("2026-01-01", Lookback(rows=10, strict=True), "lookback_rows", "needs an integer"),
    ],
)
def test_a_lookback_set_for_the_wrong_type_names_its_key(
    value: object, lookback: Lookback, key: str, words: str
) -> None:
    error = mismatch(value, lookback, "updated_at")
    assert error is not None and error.key == key and words in str(error)
    with pytest.raises(LookbackError):
        window_start(value, lookback, "updated_at")
    assert mismatch(value, Lookback(seconds=600, rows=10), "updated_at") is None  # default


def row(key: int, at: datetime, name: str = "Smith") -> SourceRow:
    return SourceRow(key, at, {"last_name": name})


def plan(lookback: Lookback) -> StreamPlan:
    return StreamPlan(
        name="contacts",
        fmap=FieldMap("Contact", "External_Id__c", "id", (("LastName", "last_name"),)),
        source=StreamSource("contacts", "id", "updated_at", ("last_name",), "x", query="q"),
        pause_on_error=True,
        lookback=lookback,
    )


def test_a_row_committed_late_inside_the_window_is_found_and_unchanged_ones_cost_nothing() -> None:
    rows = [row(i, T0 + timedelta(seconds=i)) for i in range(1, 51)]
    store = InMemoryStore({"contacts": rows})
    sink = InMemorySink()
    exporter = Exporter(store, sink, ExportPolicy(batch_size=20), FakeClock(), rng=random.Random(1))
    exporter.export_stream(plan(SECONDS))
    calls = sink.api_calls

    # A transaction that began at +10 s commits now: its row sorts behind the position.
    store.put_row("contacts", row(1000, T0 + timedelta(seconds=10), "Late"))
    result = exporter.export_stream(plan(SECONDS))
    assert result.outcome is RunOutcome.COMPLETED
    assert sink.records["1000"]["LastName"] == "Late"
    assert sink.api_calls == calls + 1
    c = result.counts
    assert (c.late, c.exported, c.unchanged) == (1, 1, 50)
    assert store.load_state("contacts").position == rows[-1].position  # never moves back

    # Outside the window (11 minutes behind): not found. The docs say so.
    store.put_row("contacts", row(2000, T0 - timedelta(minutes=11), "TooLate"))
    exporter.export_stream(plan(SECONDS))
    assert "2000" not in sink.records
