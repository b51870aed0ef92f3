"""A run's counters as crm-export shows them outside the core: in the progress display and
log, the daemon's heartbeat and metrics, and ``status``.

Each record a run reads is counted once (``ports.RunCounts``): ``read = exported +
unchanged + failed + paused + superseded``. This module is the one place that turns them
into the metrics' outcomes and reads them back from export_runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crm_export.export import StreamResult

# The outcomes a record read by a run is counted under (the metric's ``outcome`` label).
RECORD_OUTCOMES: tuple[str, ...] = ("exported", "unchanged", "failed", "paused", "superseded")

# The export_runs column behind each counter a run reports.
RUN_COLUMNS: Mapping[str, str] = {
    "read": "records_read",
    **{outcome: f"records_{outcome}" for outcome in RECORD_OUTCOMES},
    "late": "records_late",
    "api_calls": "api_calls",
    "logins": "logins",
}


def record_counts(result: StreamResult) -> dict[str, int]:
    """The run's records by outcome, in ``RECORD_OUTCOMES`` order."""
    counts = result.counts
    return {outcome: getattr(counts, outcome) for outcome in RECORD_OUTCOMES}


def run_row_counts(row: Mapping[str, Any]) -> dict[str, int]:
    """The counters of an export_runs row (as committed with the run's last batch)."""
    return {name: int(row.get(column) or 0) for name, column in RUN_COLUMNS.items()}
