"""What the core is told about a stream (``StreamPlan``), the knobs of its policy
(``ExportPolicy``), and what a run of one stream reports (``StreamResult``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crm_export.mapping import FieldMap
from crm_export.ports import (
    JobId,
    PausedRecord,
    RecordError,
    RecordFailure,
    RunCounts,
    RunOutcome,
    SourceRow,
    StreamSource,
    record_key_text,
)
from crm_export.retry import Backoff


def null_key_name(key_column: str, order_by: str, order_value: Any) -> str:
    """The ExportErrors.record_key of a row whose key is NULL: it has no key to be named by,
    so it is named by where it sits in the order, in words an operator can turn into SQL.

    Rows are told apart from real keys by their error code (CRM_EXPORT_NULL_KEY), never by
    this text; the text only has to lead a person to the row.
    """
    if order_value is None:
        return f"({key_column} is NULL; {order_by} is NULL)"
    return f"({key_column} is NULL; {order_by} = {record_key_text(order_value)})"


@dataclass(frozen=True)
class Lookback:
    """How far behind its position a stream re-reads on every run (late commits).

    ``seconds`` applies to a timestamp or date order_by (ISO text included), ``rows`` to an
    integer one: the window is the order values within that distance of the position. A
    ``strict`` lookback was set by the user, so an order_by of the wrong type is an error
    naming the key; a default one simply does not apply to it.
    """

    seconds: float = 0.0
    rows: int = 0
    strict: bool = False


@dataclass(frozen=True)
class StreamPlan:
    """One configured stream, as the core needs it."""

    name: str
    fmap: FieldMap
    source: StreamSource
    pause_on_error: bool
    # Where the stream is in the config file (``streams[0] ("contacts")``), so that a
    # problem found at run time names the key to change.
    config_path: str = ""
    lookback: Lookback = Lookback()

    def record_key(self, row: SourceRow) -> str:
        """What ExportErrors, the pause and the logs call ``row``."""
        if row.key is None:
            return null_key_name(self.source.key, self.source.order_by, row.order_value)
        return row.record_key

    def failure(
        self, row: SourceRow, error: RecordError, payload: Mapping[str, Any] | None
    ) -> RecordFailure:
        """The ExportErrors episode ``row`` opens (or bumps) with ``error``."""
        return RecordFailure(
            record_key=self.record_key(row),
            sobject=self.fmap.sobject,
            # A row without a key has no external ID: nothing in Salesforce to match.
            external_id="" if row.key is None else row.record_key,
            error=error,
            payload=payload,
        )


@dataclass(frozen=True)
class BulkPolicy:
    """When and how a stream's backlog goes through Bulk API 2.0 (``[export] bulk_*``)."""

    threshold: int = 10_000  # more rows pending than this -> Bulk; 0: never
    max_records: int = 100_000  # per job
    max_jobs_in_flight: int = 2
    poll_initial: float = 1.0
    poll_max: float = 30.0
    poll_timeout: float = 3600.0


@dataclass(frozen=True)
class ExportPolicy:
    batch_size: int = 200
    # Record-level transient errors (a row lock): bounded in attempts and in elapsed time.
    record_retry: Backoff = field(
        default_factory=lambda: Backoff(max_attempts=5, max_elapsed=120.0, initial=0.5, cap=10.0)
    )
    max_identical_errors: int = 50
    bulk: BulkPolicy = field(default_factory=BulkPolicy)
    # Collections calls one stream in skip mode keeps in flight (pause mode: always one).
    # 1 here, where the core is used alone; the config's default is 4.
    max_in_flight: int = 1
    # Rows one source query reads: a page is cut into batches, so a keyset query that has
    # no index to use (it scans and sorts the table) runs once per page, not once per
    # call. 10,000 rows of a few columns stay a few MB in memory; 50 calls per query
    # already makes the query's share of a run small even without an index.
    read_page_rows: int = 10_000

    def page_rows(self) -> int:
        """Rows per source query: ``read_page_rows`` rounded down to whole batches (a page
        shorter than that is then the last one), and at least one batch."""
        return max(1, self.read_page_rows // self.batch_size) * self.batch_size


@dataclass
class StreamResult:
    job_id: JobId
    stream: str
    run_id: int
    outcome: RunOutcome = RunOutcome.RUNNING
    counts: RunCounts = field(default_factory=RunCounts)
    error: str | None = None
    paused: PausedRecord | None = None
    # The config key to fix when the run failed on a config problem found at run time
    # (``OrgMismatchError``): the CLI then exits 2, as for a bad file.
    config_key: str | None = None
    # Why the run was deferred (the org's API usage at the line), for people.
    deferred: str | None = None

    def summary(self) -> str:
        """One line; each record read is counted once (the sum), as in export_runs."""
        c = self.counts
        text = (
            f"{self.job_id} {self.stream}: {self.outcome} - read {c.read} = "
            f"exported {c.exported} + unchanged {c.unchanged} + failed {c.failed} + "
            f"paused {c.paused} + superseded {c.superseded}"
        )
        if c.late:
            text += f" ({c.late} of them committed late, found behind the position)"
        text += f"; API calls {c.api_calls}, logins {c.logins}"
        if self.deferred:
            text += f"; deferred: {self.deferred}"
        if self.paused is not None:
            text += (
                f"; paused at record {self.paused.record_key} "
                f"({self.paused.error_code}: {self.paused.error_message})"
            )
        if self.error:
            text += f"; error: {self.error}"
        return text
