"""The lookback window: how far behind a stream's position each run re-reads.

A writer's transaction may commit a row whose order_by sorts behind a position the exporter
already passed (it ran long, or waited on a lock). Re-reading the rows whose order_by lies
within the window finds it; with fingerprints, the rows that did not change cost nothing.

Which order values get a window: datetimes and dates (``lookback_seconds``), ISO 8601 text
such as SQLite keeps timestamps in (``lookback_seconds``), and integers (``lookback_rows``:
order values within that distance). Anything else (floats, UUIDs, free text) has no
distance to speak of: a lookback set for it is refused by name, a default one does not apply.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from crm_export.errors import SourceError
from crm_export.ports import SourceValue

from .plan import Lookback

SECONDS_KEY, ROWS_KEY = "lookback_seconds", "lookback_rows"


class LookbackError(SourceError):
    """A lookback set for an order_by it cannot measure; ``key`` names the config key."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


def _iso(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def _kind(value: SourceValue) -> str | None:
    """ "time" (datetime, date, ISO text), "number" (integers), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, date | datetime):
        return "time"
    if isinstance(value, int) or (isinstance(value, Decimal) and value == value.to_integral()):
        return "number"
    if isinstance(value, str) and _iso(value) is not None:
        return "time"
    return None


def mismatch(value: SourceValue, lookback: Lookback, order_by: str) -> LookbackError | None:
    """Why ``lookback`` cannot be measured on order values like ``value`` (a strict lookback
    only: a default one just does not apply), or None."""
    if not lookback.strict or value is None:
        return None
    kind = _kind(value)
    text = repr(value[:40]) if isinstance(value, str) else str(value)
    shown = f"{type(value).__name__} ({text})"
    if lookback.seconds and kind != "time":
        hint = "; for integers use lookback_rows" if kind == "number" else ""
        return LookbackError(
            f"needs a timestamp or date order_by (or ISO 8601 text), but {order_by} holds "
            f"{shown}{hint}",
            key=SECONDS_KEY,
        )
    if lookback.rows and kind != "number":
        hint = "; for timestamps use lookback_seconds" if kind == "time" else ""
        return LookbackError(
            f"needs an integer order_by, but {order_by} holds {shown}{hint}", key=ROWS_KEY
        )
    return None


def window_start(value: SourceValue, lookback: Lookback, order_by: str) -> Any:
    """The lowest order value of the window behind a position at ``value``, in the type the
    source compares (text stays text), or None for no window."""
    error = mismatch(value, lookback, order_by)
    if error is not None:
        raise error
    kind = _kind(value)
    if kind == "number" and lookback.rows:
        return value - lookback.rows
    if kind != "time" or not lookback.seconds:
        return None
    if isinstance(value, datetime):
        return value - timedelta(seconds=lookback.seconds)
    if isinstance(value, date):
        return value - timedelta(days=math.ceil(lookback.seconds / 86_400))
    assert isinstance(value, str)
    return _text_start(value, lookback.seconds)


def _text_start(text: str, seconds: float) -> str:
    """The bound as text that sorts at or before every order value in the window.

    The bound is cut to whole seconds, without fraction or offset: "2026-01-01 10:00:05"
    sorts before "2026-01-01 10:00:05.250" and "2026-01-01 10:00:05+00:00", so the window is
    at most a second wider than asked. It uses the value's own separator (" " or "T").
    """
    moment = _iso(text)
    assert moment is not None
    stripped = text.strip()
    start = moment - timedelta(seconds=seconds)
    if len(stripped) <= 10:  # a date alone
        return start.date().isoformat()
    separator = stripped[10] if stripped[10] in "T " else " "
    return f"{start:%Y-%m-%d}{separator}{start:%H:%M:%S}"
