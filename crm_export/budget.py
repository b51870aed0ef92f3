"""The API budget governor: how much of the org's daily API allocation crm-export may spend.

An org's allocation (a rolling 24 hours) is shared by every integration, so crm-export stops
sending once the org's usage reaches ``[salesforce] max_api_usage_percent`` of it, leaving
the rest to the others. Pure policy, beside the sink's retries: both sinks (Salesforce and
its in-memory twin) ask ``before_call`` before every call that Salesforce charges, and tell
the governor what each answer said about usage (``seen``).

At most one call is made past the line: the one whose answer revealed it. Usage is known
from every answer's ``Sforce-Limit-Info`` header, so a run needs no call of its own to learn
it, except when the last run that looked found usage at the line: then its ``hint`` makes
the next call a ``/limits`` read (one call), and the run sends only if usage fell below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from crm_export.errors import ApiBudgetReached
from crm_export.ports import ApiUsage

NO_LINE = 100  # max_api_usage_percent = 100: no line of crm-export's own

# Bulk API 2.0: records per ingest job (simple-salesforce splits there; 150 MB upload cap),
# and Salesforce's internal batch, for the estimate of status polls (salesforce-api.md B6).
BULK_JOB_RECORDS = 100_000
BULK_INTERNAL_BATCH = 10_000


@dataclass
class ApiBudget:
    max_percent: int = 80
    usage: ApiUsage | None = None
    # Seen in an answer to this process (not a hint from an earlier run, which may be stale).
    fresh: bool = False
    # Streams side by side and batches in flight share one budget. Re-entrant: the /limits
    # read of ``before_call`` reports through ``seen`` on the same thread.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def line(self, limit: int) -> int | None:
        """The usage at which crm-export stops, for an allocation of ``limit`` calls."""
        if self.max_percent >= NO_LINE:
            return None
        return limit * self.max_percent // 100

    def reached(self, usage: ApiUsage) -> bool:
        line = self.line(usage.max)
        return line is not None and usage.used >= line

    def seen(self, usage: ApiUsage) -> None:
        with self._lock:
            self.usage, self.fresh = usage, True

    def hint(self, usage: ApiUsage) -> None:
        with self._lock:
            if self.usage is None:
                self.usage, self.fresh = usage, False

    def before_call(self, read_limits: Callable[[], object]) -> None:
        """Raise ``ApiBudgetReached`` when the next charged call would be past the line.

        A hint at the line is checked first with ``read_limits`` (one /limits call, which
        reports through ``seen``): the rolling 24 hours may have freed calls since.
        """
        with self._lock:  # one /limits read, however many calls wait on it
            usage = self.usage
            if usage is None or not self.reached(usage):
                return
            if not self.fresh:
                read_limits()
                usage = self.usage
                if usage is None or not self.reached(usage):
                    return
            raise self.refusal(usage)

    def refusal(self, usage: ApiUsage) -> ApiBudgetReached:
        line = self.line(usage.max)
        return ApiBudgetReached(
            f"the org's API usage is {usage.used:,} of its {usage.max:,} daily calls, at "
            f"crm-export's line of {line:,} (salesforce.max_api_usage_percent = "
            f"{self.max_percent}); it stops sending so that the org's other integrations "
            "keep their share, and a later run resumes once usage is below the line",
            used=usage.used,
            limit=usage.max,
            line=line,
        )

    def spent(self) -> ApiBudgetReached:
        """The org itself refused a call: its allocation is spent (403 TotalRequests)."""
        usage = self.usage
        shown = f" ({usage.used:,} of {usage.max:,} calls)" if usage is not None else ""
        return ApiBudgetReached(
            f"Salesforce refused the call: the org's daily API allocation is spent{shown} "
            "(REQUEST_LIMIT_EXCEEDED, TotalRequests); a later run resumes once the rolling "
            "24 hours free calls again",
            used=usage.used if usage is not None else None,
            limit=usage.max if usage is not None else None,
            line=None,
        )


@dataclass(frozen=True)
class Forecast:
    """The calls a backlog of ``pending`` rows needs, as far as can be known in advance.

    ``collections``: one sObject Collections call per batch, an upper bound (rows found
    unchanged are not sent, retries and splits come on top). ``bulk``: per Bulk API 2.0 job
    of up to 100,000 records, create + upload + close + polls + the successful and failed
    results; polls depend on how fast the org works, so it is an estimate (one poll per
    10,000-record internal batch).
    """

    pending: int
    collections: int
    bulk: int


def forecast(pending: int, batch_size: int) -> Forecast:
    collections = -(-pending // batch_size)
    bulk = 0
    for start in range(0, pending, BULK_JOB_RECORDS):
        records = min(BULK_JOB_RECORDS, pending - start)
        polls = -(-records // BULK_INTERNAL_BATCH)
        bulk += 3 + polls + 2
    return Forecast(pending, collections, bulk)
