"""The composition root: a validated config in, the export core's collaborators out.

The one place that turns config into a store, a sink and stream plans, so that ``jobs/`` and
the daemon only wire; it also starts the embedded sandbox org when ``[sandbox] enabled``.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crm_export.config import Config, Secret, StreamConfig, stream_key_path
from crm_export.errors import ConfigError, SourceError, SourceMissingError, TransientError
from crm_export.export import Exporter, ExportPolicy, StreamPlan, StreamResult
from crm_export.mapping import FieldMap
from crm_export.ports import (
    BatchAck,
    OpenError,
    Position,
    RunOutcome,
    SourceRow,
    Store,
    StreamSource,
    StreamState,
)
from crm_export.retry import Backoff, SystemClock
from crm_export.salesforce import SalesforceSink
from crm_export.store import SqlStore, migrations, preflight_source


def stream_plan(stream: StreamConfig, index: int | None = None) -> StreamPlan:
    """``stream`` as the core sees it; ``index`` (its place in the file) lets problems found
    at run time name its keys as the config checks do."""
    columns = tuple(dict.fromkeys(column for _, column in stream.fields))
    return StreamPlan(
        name=stream.name,
        fmap=FieldMap(stream.sobject, stream.external_id_field, stream.key, stream.fields),
        source=StreamSource(
            name=stream.name,
            key=stream.key,
            order_by=stream.order_by,
            columns=columns,
            source_url=stream.source_url,
            table=stream.table,
            query=stream.query,
        ),
        pause_on_error=stream.pause_on_error,
        config_path=stream_key_path(index, stream.name) if index is not None else "",
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
    if problems:
        raise ConfigError(str(config.path), problems)


def _reason(stream: StreamConfig, exc: Exception) -> str:
    return str(exc).removeprefix(f"stream {stream.name!r}: ")


def _setting_of(stream: StreamConfig, column: str) -> str:
    """The config key that names ``column``: key, order_by, or a fields entry."""
    if column == stream.key:
        return "key"
    if column == stream.order_by:
        return "order_by"
    field = next((sf for sf, col in stream.fields if col == column), None)
    return f"fields.{field}" if field else "fields"


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
    )


@dataclass
class Runtime:
    config: Config
    store: SqlStore
    sink: SalesforceSink
    exporter: Exporter
    plans: list[StreamPlan]


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
def open_runtime(config: Config, stop: threading.Event | None = None) -> Iterator[Runtime]:
    stop = stop or threading.Event()
    with ExitStack() as stack:
        if config.sandbox.enabled:
            config = stack.enter_context(embedded_sandbox(config))
        store = stack.enter_context(open_store(config.database.url))
        # Callers hold the runner lock, so a run still marked running was left by a dead
        # runner (on PostgreSQL the store also checks each run's own lock: see the method).
        store.mark_interrupted_runs()
        clock = SystemClock(stop)
        sink = SalesforceSink(config.salesforce, config.retry, clock)
        stack.callback(sink.close)
        exporter = Exporter(store, sink, export_policy(config), clock, should_stop=stop.is_set)
        plans = [stream_plan(s, i) for i, s in enumerate(config.streams)]
        yield Runtime(config, store, sink, exporter, plans)


class SelectedErrors:
    """A ``ports.Store`` whose open ExportErrors are only the rows ``ids``: the re-export
    over it retries exactly those (``crm-export errors retry``), through the same path as
    CRMExport_ExportError. Everything else is the store's own."""

    def __init__(self, store: SqlStore, ids: Collection[int]) -> None:
        self._store = store
        self._ids = set(ids)

    def open_errors(self, stream: str, after_id: int = 0, limit: int = 200) -> list[OpenError]:
        found: list[OpenError] = []
        while len(found) < limit:
            page = self._store.open_errors(stream, after_id, limit)
            if not page:
                break
            found += [e for e in page if e.id in self._ids]
            after_id = page[-1].id
        # The caller pages on from the last id it gets, so a cut here loses nothing.
        return found[:limit]

    def begin_run(self, job_id: str, stream: str) -> int:
        return self._store.begin_run(job_id, stream)

    def finish_run(self, run_id: int, outcome: RunOutcome, error: str | None = None) -> None:
        self._store.finish_run(run_id, outcome, error)

    def load_state(self, stream: str) -> StreamState:
        return self._store.load_state(stream)

    def check_source(self, source: StreamSource) -> None:
        self._store.check_source(source)

    def read_batch(
        self, source: StreamSource, after: Position | None, limit: int
    ) -> list[SourceRow]:
        return self._store.read_batch(source, after, limit)

    def read_by_keys(self, source: StreamSource, keys: Sequence[str]) -> dict[str, SourceRow]:
        return self._store.read_by_keys(source, keys)

    def source_snapshot(self, source: StreamSource) -> str | None:
        return self._store.source_snapshot(source)

    def read_late(
        self,
        source: StreamSource,
        snapshot: str,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        return self._store.read_late(source, snapshot, upto, after, limit)

    def acknowledge(self, ack: BatchAck) -> None:
        self._store.acknowledge(ack)


if TYPE_CHECKING:

    def _conforms(store: SelectedErrors) -> Store:
        return store  # mypy proves SelectedErrors implements the port


def retry_errors(runtime: Runtime, plan: StreamPlan, ids: Collection[int]) -> StreamResult:
    """CRMExport_ExportError for the ExportErrors rows ``ids`` of ``plan``'s stream only."""
    exporter = Exporter(
        SelectedErrors(runtime.store, ids),
        runtime.sink,
        export_policy(runtime.config),
        runtime.exporter.clock,
        should_stop=runtime.exporter.should_stop,
    )
    return exporter.reexport_stream(plan)
