"""A run's counters as crm-export shows them outside the core: in the progress display and
log, the daemon's heartbeat and metrics, and ``status``.

Issue 13 renames the counters so that each record is counted once (``exported``,
``unchanged``, ``failed``, ``paused``, ``superseded``, summing to ``read``). Until that lands
the core still has today's ``exported``, ``failed`` and ``skipped``; this module is the one
place that reads them, so the rename is one edit here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crm_export.export import StreamResult

# The outcomes a record read by a run is counted under (the metric's ``outcome`` label).
RECORD_OUTCOMES: tuple[str, ...] = ("exported", "failed", "skipped")

# The export_runs column behind each counter of ``run_counts``.
RUN_COLUMNS: Mapping[str, str] = {
    "read": "records_read",
    "exported": "records_exported",
    "failed": "records_failed",
    "skipped": "records_skipped",
    "api_calls": "api_calls",
}


def record_counts(result: StreamResult) -> dict[str, int]:
    """The run's records by outcome, in ``RECORD_OUTCOMES`` order."""
    return {"exported": result.exported, "failed": result.failed, "skipped": result.skipped}


def run_counts(result: StreamResult) -> dict[str, int]:
    """Every counter of a run so far: ``read``, the records by outcome and ``api_calls``."""
    return {"read": result.read, **record_counts(result), "api_calls": result.api_calls}


def run_row_counts(row: Mapping[str, Any]) -> dict[str, int]:
    """``run_counts`` of an export_runs row (as committed with the run's last batch)."""
    return {name: int(row[column] or 0) for name, column in RUN_COLUMNS.items()}
