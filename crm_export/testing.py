"""Test helpers for the export core, shipped with it (as structlog ships structlog.testing).

In-memory twins of the two ports and a clock that never sleeps. The twins follow the same
contracts as ``SqlStore`` and ``SalesforceSink``: per-batch atomic acknowledgement, one open
ExportErrors row per record, allOrNone semantics. The real components are exercised by the
integration tests against a database and the sandbox org (``crm_export.sandbox.testing``).
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from crm_export.budget import ApiBudget
from crm_export.errors import CrmExportError, RequestPayloadError, SourceError
from crm_export.ports import (
    UNCHANGED,
    ApiUsage,
    BatchAck,
    BulkJob,
    BulkJobStatus,
    ErrorStatus,
    FieldDescribe,
    OpenError,
    Position,
    RecordError,
    RunCounts,
    RunOutcome,
    SObjectDescribe,
    SourceRow,
    SourceValue,
    StreamSource,
    StreamState,
    UpsertResult,
    record_key_text,
)

ROLLED_BACK = RecordError(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using "
    "AllOrNone header",
)


@dataclass
class ErrorRow:
    id: int
    stream: str
    record_key: str
    sobject: str
    error_code: str
    error_message: str
    attempts: int
    status: ErrorStatus = ErrorStatus.OPEN
    payload: Mapping[str, Any] | None = None
    run_id: int = 0


@dataclass
class RunRow:
    id: int
    job_id: str
    stream: str
    outcome: RunOutcome = RunOutcome.RUNNING
    error: str | None = None
    counts: RunCounts = field(default_factory=RunCounts)
    usage: ApiUsage | None = None


def _sort_key(row: SourceRow) -> tuple[Any, ...]:
    return _order(row.order_value, row.key)


def _order(order_value: Any, key: Any) -> tuple[Any, ...]:
    # As SqlStore reads: NULL order values first, then NULL keys first within an order value.
    return (
        order_value is not None,
        0 if order_value is None else order_value,
        key is not None,
        0 if key is None else key,
    )


class FakeClock:
    """``retry.Clock`` whose sleeps only move its own time forward, and are recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class InMemoryStore:
    def __init__(self, rows: Mapping[str, Iterable[SourceRow]] | None = None) -> None:
        self.rows: dict[str, list[SourceRow]] = {k: list(v) for k, v in (rows or {}).items()}
        self.states: dict[str, StreamState] = {}
        self.errors: list[ErrorRow] = []
        self.runs: list[RunRow] = []
        # (stream, record_key) -> fingerprint of what Salesforce last accepted.
        self.fingerprints: dict[tuple[str, str], bytes] = {}
        # How many fingerprint lookups were asked (the core must ask once per batch).
        self.fingerprint_queries = 0
        # Raise this from the next acknowledge, before anything changes (a crash mid-commit).
        self.fail_next_ack: Exception | None = None
        # Bulk API 2.0 jobs recorded by acknowledgements, by job id (insertion order).
        self.bulk_jobs: dict[str, BulkJob] = {}

    # source side
    def put_row(self, stream: str, row: SourceRow) -> None:
        rows = self.rows.setdefault(stream, [])
        rows[:] = [r for r in rows if r.key != row.key] + [row]

    def delete_row(self, stream: str, key: Any) -> None:
        self.rows[stream] = [r for r in self.rows.get(stream, []) if r.key != key]

    def check_source(self, source: StreamSource) -> None:
        if source.name not in self.rows:
            raise SourceError(f"stream {source.name!r}: no such source table")

    def read_batch(
        self, source: StreamSource, after: Position | None, limit: int
    ) -> list[SourceRow]:
        rows = sorted(self.rows.get(source.name, []), key=_sort_key)
        if after is not None:
            rows = [r for r in rows if _sort_key(r) > _order(after.order_value, after.key)]
        return rows[:limit]

    def count_after(self, source: StreamSource, position: Position | None) -> int:
        return len(self.read_batch(source, position, len(self.rows.get(source.name, []))))

    def source_snapshot(self, source: StreamSource) -> str | None:
        return None

    def read_late(
        self,
        source: StreamSource,
        snapshot: str,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        return []

    def read_window(
        self,
        source: StreamSource,
        since: SourceValue,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        upper = _order(upto.order_value, upto.key)
        rows = [
            r
            for r in sorted(self.rows.get(source.name, []), key=_sort_key)
            if r.order_value is not None and r.order_value >= since and _sort_key(r) <= upper
        ]
        if after is not None:
            rows = [r for r in rows if _sort_key(r) > _order(after.order_value, after.key)]
        return rows[:limit]

    def read_by_keys(self, source: StreamSource, keys: Sequence[str]) -> dict[str, SourceRow]:
        wanted = set(keys)
        return {
            r.record_key: r
            for r in self.rows.get(source.name, [])
            if r.key is not None and record_key_text(r.key) in wanted
        }

    # state side
    def begin_run(self, job_id: str, stream: str) -> int:
        self.runs.append(RunRow(len(self.runs) + 1, job_id, stream))
        return len(self.runs)

    def finish_run(
        self,
        run_id: int,
        outcome: RunOutcome,
        error: str | None = None,
        *,
        tail: RunCounts | None = None,
        usage: ApiUsage | None = None,
    ) -> None:
        run = self.runs[run_id - 1]
        run.outcome, run.error = outcome, error
        run.counts += tail or RunCounts()
        run.usage = usage or run.usage

    def last_api_usage(self) -> ApiUsage | None:
        return next((r.usage for r in reversed(self.runs) if r.usage is not None), None)

    def known_fingerprints(self, stream: str, keys: Sequence[str]) -> dict[str, bytes]:
        self.fingerprint_queries += 1
        failing = {e.record_key for e in self.open_error_rows(stream)}
        return {
            key: self.fingerprints[(stream, key)]
            for key in keys
            if (stream, key) in self.fingerprints and key not in failing
        }

    def request_resync(self, stream: str) -> None:
        state = self.states.get(stream, StreamState(stream))
        self.states[stream] = replace(state, resync_requested=True)

    def load_state(self, stream: str) -> StreamState:
        return self.states.get(stream, StreamState(stream))

    def open_errors(self, stream: str, after_id: int = 0, limit: int = 200) -> list[OpenError]:
        rows = [
            OpenError(e.id, e.stream, e.record_key, e.error_code, e.attempts)
            for e in self.errors
            if e.stream == stream and e.status is ErrorStatus.OPEN and e.id > after_id
        ]
        return rows[:limit]

    def open_error_rows(self, stream: str | None = None) -> list[ErrorRow]:
        return [
            e
            for e in self.errors
            if e.status is ErrorStatus.OPEN and (stream is None or e.stream == stream)
        ]

    def acknowledge(self, ack: BatchAck) -> None:
        if self.fail_next_ack is not None:
            exc, self.fail_next_ack = self.fail_next_ack, None
            raise exc
        # Build the new state on copies and swap them in: all of it lands, or none.
        states = dict(self.states)
        errors = copy.deepcopy(self.errors)
        state = states.get(ack.stream, StreamState(ack.stream))
        if ack.position is not UNCHANGED:
            state = replace(state, position=ack.position)
        if ack.pause is not UNCHANGED:
            state = replace(state, paused=ack.pause)
        if ack.source_snapshot is not UNCHANGED:
            state = replace(state, source_snapshot=ack.source_snapshot)
        if ack.resync_requested is not UNCHANGED:
            state = replace(state, resync_requested=bool(ack.resync_requested))
        states[ack.stream] = state
        fingerprints = dict(self.fingerprints)
        if ack.forget_fingerprints:
            fingerprints = {k: v for k, v in fingerprints.items() if k[0] != ack.stream}
        fingerprints.update({(ack.stream, key): v for key, v in ack.fingerprints.items()})
        for failure in ack.failures:
            open_row = self._find_open(errors, ack.stream, failure.record_key)
            if open_row is None:
                errors.append(
                    ErrorRow(
                        len(errors) + 1,
                        ack.stream,
                        failure.record_key,
                        failure.sobject,
                        failure.error.code,
                        failure.error.message,
                        1,
                        payload=failure.payload,
                        run_id=ack.run_id,
                    )
                )
            else:
                open_row.attempts += 1
                open_row.error_code = failure.error.code
                open_row.error_message = failure.error.message
                open_row.run_id = ack.run_id
        for keys, status in (
            (ack.resolved_keys, ErrorStatus.RESOLVED),
            (ack.source_deleted_keys, ErrorStatus.SOURCE_DELETED),
        ):
            for key in keys:
                open_row = self._find_open(errors, ack.stream, key)
                if open_row is not None:
                    open_row.status = status
        run = self.runs[ack.run_id - 1]
        run.counts += ack.counts
        self.states, self.errors, self.fingerprints = states, errors, fingerprints
        if ack.bulk_job_started is not None:
            self.bulk_jobs[ack.bulk_job_started.job_id] = ack.bulk_job_started
        if ack.bulk_job_done is not None and ack.bulk_job_done in self.bulk_jobs:
            job = self.bulk_jobs[ack.bulk_job_done]
            self.bulk_jobs[job.job_id] = replace(job, status=BulkJobStatus.DONE)

    def open_bulk_jobs(self, stream: str) -> list[BulkJob]:
        return [
            j
            for j in self.bulk_jobs.values()
            if j.stream == stream and j.status is BulkJobStatus.OPEN
        ]

    def fail_bulk_job(self, job_id: str, reason: str) -> None:
        job = self.bulk_jobs.get(job_id)
        if job is not None and job.status is BulkJobStatus.OPEN:
            self.bulk_jobs[job_id] = replace(job, status=BulkJobStatus.FAILED)

    @staticmethod
    def _find_open(errors: list[ErrorRow], stream: str, key: str) -> ErrorRow | None:
        for e in errors:
            if e.stream == stream and e.record_key == key and e.status is ErrorStatus.OPEN:
                return e
        return None


Rule = Callable[[Mapping[str, Any]], RecordError | None]


class Undescribed(SObjectDescribe):
    """An object the twin was given no describe for: every field exists and takes anything,
    so that tests of other policy need not describe what they send."""

    def field(self, name: str) -> FieldDescribe | None:
        return super().field(name) or FieldDescribe(name, "anyType", external_id=True)


def describe_of(sobject: str, *fields: FieldDescribe) -> SObjectDescribe:
    """A describe for ``InMemorySink(describes=...)``; ``Id`` is added, as every object has it."""
    id_field = FieldDescribe(
        "Id",
        "id",
        length=18,
        nillable=False,
        defaulted_on_create=True,
        createable=False,
        updateable=False,
        id_lookup=True,
    )
    return SObjectDescribe(sobject, (id_field, *fields))


_QUERY = re.compile(
    r"^SELECT (?P<fields>.+?) FROM (?P<sobject>\w+) WHERE (?P<field>[\w.]+) IN \((?P<values>.*)\)$",
    re.IGNORECASE | re.DOTALL,
)
_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'")


class InMemorySink:
    """Salesforce reduced to a dict keyed by external ID, with rules and scripted faults.

    ``rules`` judge each record (its per-record result); ``payload_rules`` are the values
    Salesforce's JSON parser cannot read: a record one of them refuses fails the whole
    request (``RequestPayloadError``), before any record is looked at, as in a real org.
    ``describes`` are the objects' describes (an object not given one is ``Undescribed``);
    ``query`` reads records back with ``SELECT ... FROM O WHERE F IN ('a', ...)`` only.
    """

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        payload_rules: Sequence[Rule] = (),
        describes: Iterable[SObjectDescribe] = (),
        *,
        api_limit: int | None = None,
        max_api_usage_percent: int = 100,
    ) -> None:
        self.rules: list[Rule] = list(rules)
        self.payload_rules: list[Rule] = list(payload_rules)
        self.describes: dict[str, SObjectDescribe] = {d.name.casefold(): d for d in describes}
        self.described: list[str] = []  # objects described, in order (one call each)
        self.missing: set[str] = set()  # objects the org does not have (describe: None)
        self.sobjects: dict[str, str] = {}  # external ID -> the object it was written to
        # Whether a refusal names the index of its record, as SalesforceSink does when
        # Salesforce's answer pins it down; off, the core has only the refusal to go on.
        self.pins_culprit = True
        self.records: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []  # external IDs, in the order they were written
        self.requests: list[tuple[bool, list[str]]] = []  # (allOrNone, external IDs)
        # Raised (request-level) by the next calls, one each, before any record is looked at.
        self.request_faults: list[CrmExportError] = []
        # external ID -> how many more times it fails with UNABLE_TO_LOCK_ROW.
        self.locks: dict[str, int] = {}
        self._calls = 0
        # Per thread as well: the core counts each batch in flight on its own thread.
        self._here = threading.local()
        self._lock = threading.Lock()
        # The org's daily allocation (None: not reported) and its usage by everyone;
        # ``org_used`` may be raised by a test to play the org's other integrations.
        self.api_limit = api_limit
        self.org_used = 0
        self.budget = ApiBudget(max_api_usage_percent)
        self.limits_reads = 0

    @property
    def api_calls(self) -> int:
        return self._calls

    @property
    def logins(self) -> int:
        return 0

    def thread_counts(self) -> tuple[int, int]:
        return getattr(self._here, "calls", 0), 0

    @property
    def api_usage(self) -> ApiUsage | None:
        """As an answer to this sink reported it (a hint from an earlier run is not)."""
        return self.budget.usage if self.budget.fresh else None

    def hint_api_usage(self, usage: ApiUsage) -> None:
        self.budget.hint(usage)

    def _charge(self) -> None:
        """One charged call, answered with the usage it brings the org to."""
        with self._lock:
            self._calls += 1
            self.org_used += 1
        self._here.calls = getattr(self._here, "calls", 0) + 1
        if self.api_limit is not None:
            self.budget.seen(ApiUsage(self.org_used, self.api_limit))

    def read_limits(self) -> ApiUsage | None:
        self.limits_reads += 1
        self._charge()
        return self.budget.usage

    def upsert(
        self,
        sobject: str,
        external_id_field: str,
        records: Sequence[Mapping[str, Any]],
        *,
        all_or_none: bool,
    ) -> list[UpsertResult]:
        self.budget.before_call(self.read_limits)
        if self.api_limit is not None and self.org_used >= self.api_limit:
            raise self.budget.spent()  # the org's own refusal: 403 TotalRequests
        self._charge()
        ids = [str(r[external_id_field]) for r in records]
        self.requests.append((all_or_none, ids))
        if self.request_faults:
            raise self.request_faults.pop(0)
        self._parse(records)
        verdicts = [self._verdict(ext, rec) for ext, rec in zip(ids, records, strict=True)]
        if all_or_none and any(v is not None for v in verdicts):
            return [
                UpsertResult(False, errors=(v if v is not None else ROLLED_BACK,)) for v in verdicts
            ]
        results = []
        for ext, rec, verdict in zip(ids, records, verdicts, strict=True):
            if verdict is not None:
                results.append(UpsertResult(False, errors=(verdict,)))
                continue
            created = ext not in self.records
            self.records[ext] = dict(rec)
            self.sobjects[ext] = sobject
            self.writes.append(ext)
            results.append(UpsertResult(True, created=created, id=f"003{len(self.records):015d}"))
        return results

    def _parse(self, records: Sequence[Mapping[str, Any]]) -> None:
        for index, record in enumerate(records):
            for rule in self.payload_rules:
                error = rule(record)
                if error is not None:
                    raise RequestPayloadError(
                        f"HTTP 400 {error.code}: {error.message}",
                        code=error.code,
                        detail=error.message,
                        culprit=index if self.pins_culprit else None,
                    )

    def _verdict(self, ext: str, record: Mapping[str, Any]) -> RecordError | None:
        if self.locks.get(ext, 0) > 0:
            self.locks[ext] -= 1
            return RecordError("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")
        for rule in self.rules:
            error = rule(record)
            if error is not None:
                return error
        return None

    def describe(self, sobject: str) -> SObjectDescribe | None:
        # Charged and governed like any API call, as SalesforceSink's are.
        self.budget.before_call(self.read_limits)
        self._charge()
        self.described.append(sobject)
        if sobject.casefold() in {m.casefold() for m in self.missing}:
            return None
        return self.describes.get(sobject.casefold()) or Undescribed(sobject, ())

    def query(self, soql: str) -> list[dict[str, Any]]:
        self.budget.before_call(self.read_limits)
        self._charge()
        match = _QUERY.match(soql.strip())
        if match is None:
            raise ValueError(f"InMemorySink.query reads SELECT ... WHERE F IN (...) only: {soql}")
        wanted = {v.replace("\\'", "'").casefold() for v in _LITERAL.findall(match["values"])}
        fields = [f.strip() for f in match["fields"].split(",")]
        found = []
        for ext, record in self.records.items():
            if self.sobjects.get(ext, "").casefold() != match["sobject"].casefold():
                continue
            if str(_path(record, match["field"])).casefold() not in wanted:
                continue
            found.append({"attributes": {"type": match["sobject"]}, **_shaped(record, fields)})
        return found


def _path(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _shaped(record: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """The record as a query answers it: the fields asked for, a relationship nested."""
    out: dict[str, Any] = {}
    for path in fields:
        head, dot, rest = path.partition(".")
        if not dot:
            out[path] = record.get(path)
        elif isinstance(record.get(head), Mapping):
            nested = out.setdefault(head, {})
            nested[rest] = record[head].get(rest)
        else:
            out.setdefault(head, None)
    return out
