"""The daemon's metrics (prometheus-client) and its HTTP endpoints: ``/metrics``,
``/healthz`` and ``/readyz`` on ``[metrics] listen`` (issue 12 §2).

Two kinds of figures:

- what this process saw, counted as it happens (``Metrics`` is a ``Watch`` of every job
  run): records by outcome, runs by outcome, calls to Salesforce by kind with their
  latency, retries by error class, the org's API usage as the last answer reported it, and
  whether this runner is the active one. Counters start at 0 when the process starts, as
  Prometheus expects; ``rate()`` and ``increase()`` handle the restart.
- what the state database says, read on each scrape (``StateGauges``): paused streams and
  the pause's age, open ExportErrors by stream and code, the last completed run of each job
  and stream. Read then, they are never staler than the scrape, and they are the same
  whichever runner wrote them. Only the active runner reports them: a standby reading the
  same database would double every sum across instances.

Every metric name is in ``METRIC_NAMES``; docs/prometheus-alerts.yml uses no other.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crm_export.counters import RECORD_OUTCOMES, record_counts
from crm_export.export import StreamProgress
from crm_export.ports import ApiUsage
from crm_export.watch import Watch

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from crm_export.ports import Sink
    from crm_export.store import SqlStore

log = structlog.get_logger("crm_export.metrics")

# The kind of a call to Salesforce, by its path: the first pattern that matches.
CALL_KINDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"/services/oauth2/token$"), "login"),
    (re.compile(r"/services/Soap/u/"), "login"),
    (re.compile(r"/composite/sobjects/[^/]+/[^/]+$"), "upsert"),
    (re.compile(r"/composite(/|$)"), "composite"),
    (re.compile(r"/limits/?$"), "limits"),
    (re.compile(r"/sobjects(/[^/]+/describe)?/?$"), "describe"),
    (re.compile(r"/query(All)?/?$"), "query"),
    (re.compile(r"/jobs/"), "bulk"),
    (re.compile(r"/oauth2/userinfo$|^/id/"), "identity"),
)

# Salesforce calls take from tens of milliseconds to the 10 minutes it allows a call.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0)

METRIC_NAMES: tuple[str, ...] = (
    "crm_export_records_total",
    "crm_export_runs_total",
    "crm_export_salesforce_calls_total",
    "crm_export_salesforce_call_seconds",
    "crm_export_retries_total",
    "crm_export_record_retries_total",
    "crm_export_org_api_usage_percent",
    "crm_export_runner_active",
    "crm_export_state_database_up",
    "crm_export_stream_paused",
    "crm_export_stream_pause_age_seconds",
    "crm_export_export_errors_open",
    "crm_export_last_success_timestamp_seconds",
)


def call_kind(url: str) -> str:
    """``upsert``, ``login``, ``limits``, ``describe``... for a Salesforce URL."""
    path = urlsplit(url).path.rstrip("/") or "/"
    return next((kind for pattern, kind in CALL_KINDS if pattern.search(path)), "other")


def status_class(status: int | None) -> str:
    """``2xx``... or ``none`` when no answer came (a network error, a timeout)."""
    return "none" if status is None else f"{status // 100}xx"


class Metrics(Watch):
    """The daemon's registry, fed by watching every job run."""

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "crm_export_records",
            "Records a run read, by what became of each (each record counted once).",
            ["stream", "outcome"],
            registry=r,
        )
        self.runs = Counter(
            "crm_export_runs",
            "Runs of a job on a stream, by outcome.",
            ["job", "stream", "outcome"],
            registry=r,
        )
        self.calls = Counter(
            "crm_export_salesforce_calls",
            "HTTP calls to Salesforce by kind (upsert, login, limits...) and status class; "
            "retried attempts and logins included.",
            ["kind", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "crm_export_salesforce_call_seconds",
            "How long each HTTP call to Salesforce took, answer included.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "crm_export_retries",
            "Requests retried after a transient error, by its class.",
            ["error_class"],
            registry=r,
        )
        self.record_retries = Counter(
            "crm_export_record_retries",
            "Records sent again after a record-level transient error (a row lock), by stream "
            "and Salesforce's status code.",
            ["stream", "code"],
            registry=r,
        )
        self.active = Gauge(
            "crm_export_runner_active",
            "1 on the runner that holds the runner lock, 0 on a standby.",
            registry=r,
        )
        self.state = StateGauges(now)
        r.register(self.state)
        r.register(_ApiUsage(self))
        self._counted: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()
        self.sink: Sink | None = None
        self.last_usage: ApiUsage | None = None

    def know_streams(self, streams: Iterable[str]) -> None:
        """Start each stream's record counters at 0, so the first increase is seen."""
        for stream in streams:
            for outcome in RECORD_OUTCOMES:
                self.records.labels(stream, outcome)

    # -- Watch -----------------------------------------------------------------------------

    def progress(self, progress: StreamProgress) -> None:
        result = progress.result
        counts = record_counts(result)
        with self._lock:
            before = self._counted.get(result.run_id, {})
            if progress.finished:
                self._counted.pop(result.run_id, None)
            else:
                self._counted[result.run_id] = counts
        for outcome, count in counts.items():
            added = count - before.get(outcome, 0)
            if added > 0:
                self.records.labels(result.stream, outcome).inc(added)
        if progress.finished:
            self.runs.labels(str(result.job_id), result.stream, str(result.outcome)).inc()

    def salesforce_call(self, method: str, url: str, seconds: float, status: int | None) -> None:
        kind = call_kind(url)
        self.calls.labels(kind, status_class(status)).inc()
        self.latency.labels(kind).observe(seconds)

    def salesforce_retry(self, error_class: str) -> None:
        self.retries.labels(error_class).inc()

    def record_retry(self, stream: str, code: str) -> None:
        self.record_retries.labels(stream, code).inc()

    def sink_opened(self, sink: Sink) -> None:
        # The run's sink, kept after the run for the last usage it saw; a run that makes no
        # call sees none, so the usage seen before it stays in force.
        self.last_usage = self.api_usage()
        self.sink = sink

    def api_usage(self) -> ApiUsage | None:
        """The org's usage as the last answer from Salesforce reported it."""
        sink = self.sink
        usage = sink.api_usage if sink is not None else None
        return usage if usage is not None else self.last_usage


class _ApiUsage(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        usage = self.metrics.api_usage()
        if usage is None or usage.max <= 0:
            return
        gauge = GaugeMetricFamily(
            "crm_export_org_api_usage_percent",
            "The org's daily API requests used, in percent of its allocation, as the last "
            "answer from Salesforce reported (Sforce-Limit-Info).",
        )
        gauge.add_metric([], 100.0 * usage.used / usage.max)
        yield gauge


class StateGauges(Collector):
    """Gauges read from the state database on each scrape, once ``watch`` is called (on
    the active runner only)."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now
        self._store: SqlStore | None = None
        self._streams: Callable[[], Sequence[str]] = list
        self._up = True
        self._lock = threading.Lock()

    def watch(self, url: str, streams: Callable[[], Sequence[str]]) -> None:
        from crm_export.store import SqlStore

        with self._lock:
            self.close()
            self._store = SqlStore(url)
            self._streams = streams

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy.exc import SQLAlchemyError

        from crm_export.errors import CrmExportError

        store = self._store
        if store is None:
            return
        up = GaugeMetricFamily(
            "crm_export_state_database_up",
            "1 when the last read of the state database for these metrics worked.",
        )
        try:
            snapshot = store.monitoring_snapshot()
        except (CrmExportError, SQLAlchemyError) as exc:
            if self._up:
                log.warning("metrics_state_unreadable", error=str(exc))
            self._up = False
            up.add_metric([], 0)
            yield up
            return
        self._up = True
        up.add_metric([], 1)
        yield up
        now = self.now()
        paused = GaugeMetricFamily(
            "crm_export_stream_paused",
            "1 while the stream is paused at a record (pause_on_error), else 0.",
            labels=["stream"],
        )
        age = GaugeMetricFamily(
            "crm_export_stream_pause_age_seconds",
            "How long the stream has been paused, for paused streams only.",
            labels=["stream"],
        )
        for stream in sorted(set(self._streams()) | set(snapshot.paused_since)):
            since = snapshot.paused_since.get(stream)
            paused.add_metric([stream], 0 if since is None else 1)
            if since is not None:
                age.add_metric([stream], max(0.0, (now - since).total_seconds()))
        errors = GaugeMetricFamily(
            "crm_export_export_errors_open",
            "Open ExportErrors rows by stream and error code.",
            labels=["stream", "code"],
        )
        for (stream, code), count in sorted(snapshot.open_errors.items()):
            errors.add_metric([stream, code], count)
        success = GaugeMetricFamily(
            "crm_export_last_success_timestamp_seconds",
            "When the job's last completed run on the stream finished (Unix time).",
            labels=["job", "stream"],
        )
        for (job, stream), finished in sorted(snapshot.last_completed.items()):
            success.add_metric([job, stream], finished.timestamp())
        yield from (paused, age, errors, success)


# -- HTTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: dict[str, Any]


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a thread of their own.

    ``health`` and ``ready`` are asked on every request; each answers 200 when ok, else
    503, with its detail as JSON.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Callable[[], Health],
        ready: Callable[[], Health],
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._routes = {"/healthz": health, "/readyz": ready}
        server_class = _Server6 if ":" in host else _Server
        self._server = make_server(
            host, port, self._app, server_class=server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port listened on (the one picked, when configured as 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        check = self._routes.get(path)
        if check is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /metrics, /healthz and /readyz are served here\n"]
        answer = check()
        status = "200 OK" if answer.ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps({"ok": answer.ok, **answer.detail}, sort_keys=True).encode() + b"\n"]


class _Server(ThreadingMixIn, WSGIServer):
    # A scrape never holds the daemon's exit back.
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # A plain-text request line on stderr would break a log pipeline that parses JSON.
        return None
