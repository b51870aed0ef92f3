"""``DeferredSink``: the run's ``SalesforceSink``, created when the run first needs
Salesforce.

Most runs of a daemon find nothing to send. Creating the sink imports requests and
simple-salesforce (about 130 ms, more than the rest of such a run) and sets up its HTTP
session; deferring it costs a run that sends nothing neither, and one that sends the same as
before. No call to the org is made either way before the first upsert, describe or query.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crm_export.ports import ApiUsage, BulkJobInfo, SObjectDescribe, UpsertResult

if TYPE_CHECKING:
    from crm_export.salesforce.bulk import SalesforceBulk
    from crm_export.salesforce.sink import SalesforceSink


class DeferredSink:
    """The Sink port over the ``SalesforceSink`` that ``open_sink`` makes on first use.

    Until then it reports what a sink that made no call reports: no calls, no logins, no
    usage seen; a usage hint is kept and handed to the sink when it is made. Thread-safe:
    streams running side by side share one sink.
    """

    def __init__(self, open_sink: Callable[[], SalesforceSink]) -> None:
        self._open_sink = open_sink
        self._sink: SalesforceSink | None = None
        self._hint: ApiUsage | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def opened(self) -> SalesforceSink | None:
        """The sink, once something needed it."""
        return self._sink

    def sink(self) -> SalesforceSink:
        """The sink, made now if nothing needed it yet."""
        sink = self._sink
        if sink is not None:
            return sink
        with self._lock:
            if self._sink is None:
                if self._closed:
                    raise RuntimeError("the run's Salesforce sink is closed")
                sink = self._open_sink()
                if self._hint is not None:
                    sink.hint_api_usage(self._hint)
                self._sink = sink
            return self._sink

    @property
    def api_calls(self) -> int:
        return 0 if self._sink is None else self._sink.api_calls

    @property
    def logins(self) -> int:
        return 0 if self._sink is None else self._sink.logins

    def thread_counts(self) -> tuple[int, int]:
        # Before the sink exists no thread has made a call: (0, 0) for each.
        return (0, 0) if self._sink is None else self._sink.thread_counts()

    @property
    def api_usage(self) -> ApiUsage | None:
        return None if self._sink is None else self._sink.api_usage

    def hint_api_usage(self, usage: ApiUsage) -> None:
        with self._lock:
            if self._sink is None:
                self._hint = usage
                return
        self._sink.hint_api_usage(usage)

    def upsert(
        self,
        sobject: str,
        external_id_field: str,
        records: Sequence[Mapping[str, Any]],
        *,
        all_or_none: bool,
    ) -> list[UpsertResult]:
        return self.sink().upsert(sobject, external_id_field, records, all_or_none=all_or_none)

    def describe(self, sobject: str) -> SObjectDescribe | None:
        return self.sink().describe(sobject)

    def query(self, soql: str) -> list[dict[str, Any]]:
        return self.sink().query(soql)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sink = self._sink
        if sink is not None:
            sink.close()


class DeferredBulk:
    """The BulkSink port over the deferred sink: ``SalesforceBulk`` (and the HTTP stack it
    needs) is made when a run first sends a Bulk job, never for a run below the threshold."""

    def __init__(self, sink: DeferredSink) -> None:
        self._deferred = sink
        self._bulk: SalesforceBulk | None = None

    def _made(self) -> SalesforceBulk:
        if self._bulk is None:
            from crm_export.salesforce.bulk import SalesforceBulk

            self._bulk = SalesforceBulk(self._deferred.sink())
        return self._bulk

    def create_job(self, sobject: str, external_id_field: str) -> str:
        return self._made().create_job(sobject, external_id_field)

    def upload(self, job_id: str, data: bytes) -> None:
        self._made().upload(job_id, data)

    def close_job(self, job_id: str) -> BulkJobInfo:
        return self._made().close_job(job_id)

    def abort_job(self, job_id: str) -> BulkJobInfo:
        return self._made().abort_job(job_id)

    def job_info(self, job_id: str) -> BulkJobInfo:
        return self._made().job_info(job_id)

    def results(self, job_id: str, kind: str) -> str:
        return self._made().results(job_id, kind)
