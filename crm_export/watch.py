"""What a job run reports while it works, to whoever watches it.

Three sources: the export core (each stream's ``StreamProgress``), the Salesforce sink
(every HTTP exchange, timed, and every request-level retry; the core also reports each
record it retries) and the composition root (the
sink itself, once per run, for what it has seen of the org's API usage). ``Watch`` ignores
them all; the terminal display, the progress log, the daemon's heartbeat and its metrics
each override what they need, and ``Watches`` hands every report to several.

A watcher is called on the job's thread, in the middle of a run: it must be quick, and it
must not raise (the core and the sink log and ignore a watcher's failure).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from crm_export.export import StreamProgress
    from crm_export.ports import Sink

log = structlog.get_logger("crm_export.watch")


class Watch:
    def progress(self, progress: StreamProgress) -> None:
        """A stream run began (nothing done yet), acknowledged a batch, or finished."""

    def salesforce_call(self, method: str, url: str, seconds: float, status: int | None) -> None:
        """One HTTP exchange with Salesforce ended: ``status`` None when no answer came."""

    def salesforce_retry(self, error_class: str) -> None:
        """A request is about to be retried after a transient error of this class."""

    def record_retry(self, stream: str, code: str) -> None:
        """One record of a batch is about to be sent again after a record-level transient
        error (``code``: UNABLE_TO_LOCK_ROW...), the rest of its request having been answered."""

    def sink_opened(self, sink: Sink) -> None:
        """The run's Salesforce sink, for what it learns of the org (``api_usage``)."""


class Watches(Watch):
    """Every report to each of ``watches``, in order; one that raises is logged and does not
    stop the others."""

    def __init__(self, watches: Iterable[Watch]) -> None:
        self.watches = list(watches)

    def _each(self, report: str, call: Callable[[Watch], None]) -> None:
        for watch in self.watches:
            try:
                call(watch)
            except Exception:
                log.exception("watcher_failed", watcher=type(watch).__name__, report=report)

    def progress(self, progress: StreamProgress) -> None:
        self._each("progress", lambda w: w.progress(progress))

    def salesforce_call(self, method: str, url: str, seconds: float, status: int | None) -> None:
        self._each("salesforce_call", lambda w: w.salesforce_call(method, url, seconds, status))

    def salesforce_retry(self, error_class: str) -> None:
        self._each("salesforce_retry", lambda w: w.salesforce_retry(error_class))

    def record_retry(self, stream: str, code: str) -> None:
        self._each("record_retry", lambda w: w.record_retry(stream, code))

    def sink_opened(self, sink: Sink) -> None:
        self._each("sink_opened", lambda w: w.sink_opened(sink))
