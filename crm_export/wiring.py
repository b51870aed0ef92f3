"""The composition root: a validated config in, the export core's collaborators out.

The one place that turns config into a store, a sink and stream plans, so that ``jobs/`` and
the daemon only wire; it also starts the embedded sandbox org when ``[sandbox] enabled``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.engine import make_url

from crm_export.config import Config, Secret, StreamConfig, stream_key_path
from crm_export.config.relations import dependencies
from crm_export.errors import ConfigError, SourceError, SourceMissingError, TransientError
from crm_export.export import BulkPolicy, Exporter, ExportPolicy, Lookback, StreamPlan, StreamResult
from crm_export.export.lookback import mismatch
from crm_export.export.parallel import run_streams
from crm_export.mapping import FieldMap, Lookup
from crm_export.ports import StreamSource
from crm_export.retry import Backoff, SystemClock
from crm_export.salesforce.deferred import DeferredBulk, DeferredSink
from crm_export.store import SqlStore, migrations, preflight_source
from crm_export.store.sources import SourceReader
from crm_export.store.urls import is_memory_sqlite
from crm_export.stream_order import dependency_order
from crm_export.watch import Watch

if TYPE_CHECKING:
    from crm_export.salesforce import SalesforceSink

# The lookback of a stream that sets none, where writers can commit out of order: wide
# enough for any transaction of an application's (minutes at most), re-read on every run.
# SQLite has one writer at a time, so rows commit in order; PostgreSQL tables are rescanned
# by xmin instead (store/sources.py read_late). Everything else (PostgreSQL queries, MySQL,
# SQL Server...) gets it.
DEFAULT_LOOKBACK = Lookback(seconds=600.0, rows=1000)

log = structlog.get_logger("crm_export.wiring")


def lookback_for(stream: StreamConfig) -> Lookback:
    """The stream's lookback: as configured (strict), or the default for its database."""
    if stream.lookback_seconds is not None or stream.lookback_rows is not None:
        return Lookback(stream.lookback_seconds or 0.0, stream.lookback_rows or 0, strict=True)
    backend = make_url(stream.source_url).get_backend_name()
    if backend == "sqlite" or (backend == "postgresql" and stream.table is not None):
        return Lookback()
    return DEFAULT_LOOKBACK


def stream_plan(stream: StreamConfig, index: int | None = None) -> StreamPlan:
    """``stream`` as the core sees it; ``index`` (its place in the file) lets problems found
    at run time name its keys as the config checks do."""
    lookups = tuple(
        Lookup.derive(field, p.sobject, p.external_id_field, p.column, p.relationship)
        for field, p in stream.lookups.items()
    )
    fmap = FieldMap(stream.sobject, stream.external_id_field, stream.key, stream.fields, lookups)
    return StreamPlan(
        name=stream.name,
        fmap=fmap,
        source=StreamSource(
            name=stream.name,
            key=stream.key,
            order_by=stream.order_by,
            columns=fmap.columns,
            source_url=stream.source_url,
            table=stream.table,
            query=stream.query,
        ),
        pause_on_error=stream.pause_on_error,
        config_path=stream_key_path(index, stream.name) if index is not None else "",
        lookback=lookback_for(stream),
    )


def check_sources(config: Config) -> None:
    """Raise ``ConfigError`` naming the key when a stream's SQLite file, table or columns do
    not exist, before any state database is touched. A source that can not be reached right
    now is left for the run to report: that is an outage, not a mistake in the file."""
    problems: list[str] = []
    for i, stream in enumerate(config.streams):
        where = stream_key_path(i, stream.name)
        try:
            preflight_source(stream_plan(stream).source)
        except TransientError:
            continue
        except SourceMissingError as exc:
            if exc.columns:  # each column's problem, under the key that names the column
                problems += [
                    f"{where}.{_setting_of(stream, c)}: {p}" for c, p in exc.columns.items()
                ]
            else:
                problems.append(f"{where}.{exc.setting or 'table'}: {_reason(stream, exc)}")
        except SourceError as exc:
            problems.append(
                f"{where}.{'table' if stream.table else 'query'}: {_reason(stream, exc)}"
            )
        else:
            problems += _lookback_problems(stream, where)
    if problems:
        raise ConfigError(str(config.path), problems)


def _lookback_problems(stream: StreamConfig, where: str) -> list[str]:
    """A lookback set for an order_by it cannot measure, found from the newest order value
    (a source with no row yet has nothing to tell: the run checks again)."""
    plan = stream_plan(stream)
    if not plan.lookback.strict or not (plan.lookback.seconds or plan.lookback.rows):
        return []
    reader = SourceReader()
    try:
        value = reader.latest_order_value(plan.source)
    except (SourceError, TransientError):
        return []
    finally:
        reader.close()
    error = mismatch(value, plan.lookback, stream.order_by)
    return [] if error is None else [f"{where}.{error.key}: {error}"]


def _reason(stream: StreamConfig, exc: Exception) -> str:
    return str(exc).removeprefix(f"stream {stream.name!r}: ")


def _setting_of(stream: StreamConfig, column: str) -> str:
    """The config key that names ``column``: key, order_by, a fields or a lookups entry."""
    if column == stream.key:
        return "key"
    if column == stream.order_by:
        return "order_by"
    field = next((sf for sf, col in stream.fields if col == column), None)
    if field is not None:
        return f"fields.{field}"
    lookup = next((f for f, p in stream.lookups.items() if p.column == column), None)
    return f"lookups.{lookup}.column" if lookup else "fields"


def ordered_streams(config: Config) -> list[StreamConfig]:
    """The streams in the order both jobs run them: parents before children (depends_on,
    and lookups into an object another stream exports), otherwise as in the file."""
    by_name = {s.name: s for s in config.streams}
    order = dependency_order(list(by_name), dependencies(config.streams))
    return [by_name[name] for name in order]


def export_policy(config: Config) -> ExportPolicy:
    retry = config.retry
    return ExportPolicy(
        batch_size=config.export.batch_size,
        record_retry=Backoff(
            config.export.record_retry_attempts,
            retry.max_elapsed_seconds,
            retry.initial_backoff_seconds,
            retry.max_backoff_seconds,
        ),
        max_identical_errors=config.export.max_identical_errors,
        bulk=BulkPolicy(
            threshold=config.export.bulk_threshold,
            max_records=config.export.bulk_max_records,
            max_jobs_in_flight=config.export.bulk_max_jobs_in_flight,
            poll_initial=config.export.bulk_poll_initial_seconds,
            poll_max=config.export.bulk_poll_max_seconds,
            poll_timeout=config.export.bulk_poll_timeout_seconds,
        ),
        max_in_flight=config.export.max_in_flight,
    )


def max_connections(config: Config) -> int:
    """The most calls a run may have in flight at once: one per batch in flight of every
    stream running, and one for the describe or /limits read beside them."""
    export = config.export
    return max(10, export.max_in_flight * export.max_parallel_streams + 1)


@dataclass
class Runtime:
    config: Config
    store: SqlStore
    sink: DeferredSink
    exporter: Exporter
    plans: list[StreamPlan]

    def run_streams(self, run: Callable[[StreamPlan], StreamResult]) -> list[StreamResult]:
        """``run`` every stream, up to ``[export] max_parallel_streams`` at once, each after
        the streams it depends on (depends_on, lookups) have finished; in plan order."""
        by_name = {p.name: p for p in self.plans}
        side_by_side = self.config.export.max_parallel_streams
        if is_memory_sqlite(self.config.database.url):
            # One connection serves an in-memory database: its transactions cannot overlap.
            side_by_side = 1
        return run_streams(
            list(by_name),
            dependencies(self.config.streams),
            lambda name: run(by_name[name]),
            side_by_side,
        )


@contextmanager
def embedded_sandbox(config: Config) -> Iterator[Config]:
    """Start the sandbox org in-process and point ``[salesforce]`` at it."""
    from crm_export.sandbox.server import SandboxServer
    from crm_export.sandbox.testing import SandboxHandle

    sandbox = config.sandbox
    server = SandboxServer(org=sandbox.org_file, data=sandbox.data_file, port=sandbox.port)
    server.start()
    try:
        handle = SandboxHandle(server)
        salesforce = config.salesforce.model_copy(
            update={
                "login_url": handle.base_url,
                "auth": "client_credentials",
                "client_id": handle.client_id,
                "client_secret": Secret(handle.client_secret, "the embedded sandbox org"),
                "ca_bundle": Path(handle.ca_path),
            }
        )
        yield config.model_copy(update={"salesforce": salesforce})
    finally:
        server.stop()


@contextmanager
def open_sink(config: Config) -> Iterator[SalesforceSink]:
    """A sink on ``[salesforce]`` (the embedded sandbox org when ``[sandbox] enabled``), for
    the commands that talk to Salesforce without running a job (``check``, ``verify``)."""
    from crm_export.salesforce import SalesforceSink

    with ExitStack() as stack:
        if config.sandbox.enabled:
            config = stack.enter_context(embedded_sandbox(config))
        sink = SalesforceSink(config.salesforce, config.retry, SystemClock())
        stack.callback(sink.close)
        yield sink


def open_store(url: str) -> SqlStore:
    """A store on the state database at ``url``, once its schema is checked to be this
    version's (``migrations.ensure_schema``: a fresh SQLite database, in a file or in
    memory, is set up instead)."""
    store = SqlStore(url)
    try:
        migrations.ensure_schema(url, store.engine)
    except BaseException:
        store.close()
        raise
    return store


@contextmanager
def open_runtime(
    config: Config, stop: threading.Event | None = None, watch: Watch | None = None
) -> Iterator[Runtime]:
    """Everything one job run needs; ``watch`` is told the run's progress, its calls to
    Salesforce and their retries (without one, no progress is counted or reported)."""
    stop = stop or threading.Event()
    with ExitStack() as stack:
        if config.sandbox.enabled:
            config = stack.enter_context(embedded_sandbox(config))
        store = stack.enter_context(open_store(config.database.url))
        # Callers hold the runner lock, so a run still marked running was left by a dead
        # runner (on PostgreSQL the store also checks each run's own lock: see the method).
        store.mark_interrupted_runs()
        clock = SystemClock(stop)
        salesforce, retry = config.salesforce, config.retry
        connections = max_connections(config)

        def make_sink() -> SalesforceSink:
            from crm_export.salesforce import SalesforceSink

            return SalesforceSink(
                salesforce,
                retry,
                clock,
                on_call=watch.salesforce_call if watch else None,
                on_retry=watch.salesforce_retry if watch else None,
                connections=connections,
            )

        # Made when the run first needs Salesforce: a run with nothing to send never
        # imports requests and simple-salesforce (see salesforce/deferred.py).
        sink = DeferredSink(make_sink)
        stack.callback(sink.close)
        if watch is not None:
            watch.sink_opened(sink)
        exporter = Exporter(
            store,
            sink,
            export_policy(config),
            clock,
            should_stop=stop.is_set,
            on_progress=watch.progress if watch else None,
            on_record_retry=watch.record_retry if watch else None,
            bulk=DeferredBulk(sink),
        )
        index = {s.name: i for i, s in enumerate(config.streams)}
        plans = [stream_plan(s, index[s.name]) for s in ordered_streams(config)]
        yield Runtime(config, store, sink, exporter, plans)


def warn_about_indexes(store: SqlStore, plans: Collection[StreamPlan]) -> None:
    """Log ``source_index_missing`` for each stream whose source table has no index for its
    keyset reads, with the statement that creates one (once per run: a few catalog
    queries). A source that can not be read now is left for the run to report."""
    for plan in plans:
        try:
            statement = store.missing_keyset_index(plan.source)
        except (SourceError, TransientError):
            continue
        if statement is not None:
            log.warning(
                "source_index_missing",
                stream=plan.name,
                table=plan.source.table,
                columns=[plan.source.order_by, plan.source.key],
                statement=statement,
                detail=index_advice(plan.source, statement),
            )


def index_advice(source: StreamSource, statement: str) -> str:
    """What ``crm-export check`` and the run's warning say about a missing index."""
    return (
        f"stream {source.name!r}: table {source.table} has no index on "
        f"({source.order_by}, {source.key}), so every batch scans and sorts the whole table; "
        f"create one with: {statement};"
    )


def retry_errors(runtime: Runtime, plan: StreamPlan, ids: Collection[int]) -> StreamResult:
    """CRMExport_ExportError for the ExportErrors rows ``ids`` of ``plan``'s stream only."""
    return runtime.exporter.reexport_stream(plan, only=ids)
