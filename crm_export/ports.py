"""The export core's two narrow ports, and the plain values that cross them.

Nothing here imports a database driver or an HTTP client: the core sees a ``Store`` (source
rows, positions, ExportErrors, runs) and a ``Sink`` (Salesforce upserts) and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

# Values read from the source: str, int, float, Decimal, bool, date, datetime, bytes or None.
SourceValue = Any


class JobId(StrEnum):
    """The two scheduled jobs, as users name them (CLI, logs, export_runs.job_id)."""

    EXPORT = "CRMExport"
    REEXPORT = "CRMExport_ExportError"


class RunOutcome(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    PAUSED = "paused"
    FAILED = "failed"
    # The org's API usage reached [salesforce] max_api_usage_percent: the stream stopped
    # sending, its position holds, and a later run resumes once usage is below the line.
    DEFERRED = "deferred"
    # Left "running" by a runner that died; marked so by the next runner that takes the lock.
    INTERRUPTED = "interrupted"


class ErrorStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    SOURCE_DELETED = "source_deleted"
    # Closed by a person (`crm-export errors skip`): never retried.
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Position:
    """The last confirmed record of a stream, in (order_by, key) order."""

    order_value: SourceValue
    key: SourceValue


@dataclass(frozen=True)
class SourceRow:
    key: SourceValue
    order_value: SourceValue
    values: Mapping[str, SourceValue]

    @property
    def record_key(self) -> str:
        """The key as text: the external ID value and ExportErrors.record_key."""
        return record_key_text(self.key)

    @property
    def position(self) -> Position:
        return Position(self.order_value, self.key)


def record_key_text(key: SourceValue) -> str:
    if isinstance(key, bytes):
        # A key that is not UTF-8 must still name its record (in ExportErrors and logs).
        return key.decode("utf-8", errors="backslashreplace")
    return str(key)


@dataclass(frozen=True)
class RecordError:
    """One error of one record, as Salesforce (or our own mapping) reported it."""

    code: str
    message: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpsertResult:
    success: bool
    created: bool | None = None
    id: str | None = None
    errors: tuple[RecordError, ...] = ()


@dataclass(frozen=True)
class RecordFailure:
    """A record-level failure to open (or bump) an ExportErrors row for."""

    record_key: str
    sobject: str
    external_id: str
    error: RecordError
    payload: Mapping[str, Any] | None


@dataclass(frozen=True)
class PausedRecord:
    record_key: str
    since: datetime
    error_code: str
    error_message: str


@dataclass(frozen=True)
class StreamState:
    stream: str
    position: Position | None = None
    paused: PausedRecord | None = None
    # Where late commits are searched from (PostgreSQL sources); opaque to the core.
    source_snapshot: str | None = None
    # `crm-export stream resync` asked the next CRMExport run to send every row again.
    resync_requested: bool = False


@dataclass(frozen=True)
class OpenError:
    id: int
    stream: str
    record_key: str
    error_code: str
    attempts: int


@dataclass(frozen=True)
class StreamSource:
    """What the store needs to read one stream's source rows."""

    name: str
    key: str
    order_by: str
    columns: tuple[str, ...]
    source_url: str
    table: str | None = None
    query: str | None = None


@dataclass(frozen=True)
class RunCounts:
    """A run's counters (and one acknowledgement's share of them).

    Each row read is counted once: ``read = exported + unchanged + failed + paused +
    superseded``. ``late`` is an "of which" count (those rows are also in one of the five),
    and the calls are not rows. README's export_runs table documents each; metrics and logs
    use these names.
    """

    read: int = 0
    exported: int = 0  # sent, and Salesforce accepted them
    unchanged: int = 0  # not sent: Salesforce already holds this payload (its fingerprint)
    failed: int = 0  # rejected, ExportErrors row open, the stream did not wait for it
    paused: int = 0  # rejected in pause mode: the stream halts at it (0 or 1 per run)
    superseded: int = 0  # not sent: a later row of the same batch has the same key
    late: int = 0  # of the above, rows found behind the position whose payload had changed
    api_calls: int = 0  # requests charged against the org's daily API allocation
    logins: int = 0  # OAuth token requests, which Salesforce does not charge

    def __add__(self, other: RunCounts) -> RunCounts:
        return RunCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RunCounts))


@dataclass(frozen=True)
class ApiUsage:
    """The org's daily API usage, as Salesforce reported it (``api-usage=used/max``)."""

    used: int
    max: int


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


@dataclass
class BatchAck:
    """Everything one batch changes in the state database, committed in one transaction."""

    stream: str
    run_id: int
    position: Position | None = UNCHANGED
    # PausedRecord to pause, None to release the pause, UNCHANGED to leave it.
    pause: PausedRecord | None = UNCHANGED
    source_snapshot: str | None = UNCHANGED
    failures: list[RecordFailure] = field(default_factory=list)
    resolved_keys: list[str] = field(default_factory=list)
    source_deleted_keys: list[str] = field(default_factory=list)
    # record_key -> fingerprint of the payload Salesforce accepted in this batch.
    fingerprints: dict[str, bytes] = field(default_factory=dict)
    # Forget every fingerprint of the stream first (a resync: every row is sent again).
    forget_fingerprints: bool = False
    # True to ask the next CRMExport run to resync, False to clear the request, or UNCHANGED.
    resync_requested: bool = UNCHANGED
    counts: RunCounts = field(default_factory=RunCounts)
    # Bulk API 2.0: a job to record as in flight (its id and key range, before its upload),
    # or the id of one whose outcome this acknowledgement commits (it is then done).
    bulk_job_started: BulkJob | None = None
    bulk_job_done: str | None = None


class BulkJobStatus(StrEnum):
    """A Bulk API 2.0 job as bulk_jobs records it."""

    # Created in Salesforce and recorded before its upload: its outcome is not known yet.
    OPEN = "open"
    # Its outcome was acknowledged (the position moved over its rows).
    DONE = "done"
    # Salesforce never finished it (Failed, Aborted, or abandoned by crm-export before it
    # was closed): its rows were not acknowledged and go again.
    FAILED = "failed"


@dataclass(frozen=True)
class BulkJob:
    """One Bulk API 2.0 ingest job of a stream and the source rows it covers: those after
    ``after`` up to ``last`` (both in (order_by, key) order)."""

    job_id: str
    stream: str
    after: Position | None
    first: Position
    last: Position
    records: int  # rows in its CSV
    status: BulkJobStatus = BulkJobStatus.OPEN
    created_at: datetime | None = None


@dataclass(frozen=True)
class BulkJobInfo:
    """A job as Salesforce reports it (``GET /jobs/ingest/{id}``)."""

    job_id: str
    state: str  # Open, UploadComplete, InProgress, JobComplete, Failed, Aborted
    processed: int = 0
    failed: int = 0
    error_message: str | None = None


class BulkSink(Protocol):
    """Bulk API 2.0 ingest as the core sees it. Every call is one charged API call, retried
    on transient faults and governed by the API budget, like the Sink's."""

    def create_job(self, sobject: str, external_id_field: str) -> str:
        """An upsert job (CSV, comma, LF); its id."""

    def upload(self, job_id: str, data: bytes) -> None: ...

    def close_job(self, job_id: str) -> BulkJobInfo:
        """UploadComplete: Salesforce starts processing."""

    def abort_job(self, job_id: str) -> BulkJobInfo: ...

    def job_info(self, job_id: str) -> BulkJobInfo: ...

    def results(self, job_id: str, kind: str) -> str:
        """The CSV of ``successfulResults``, ``failedResults`` or ``unprocessedrecords``."""


@dataclass(frozen=True)
class FieldDescribe:
    """What describe says about one field (DescribeFieldResult), as far as crm-export reads it."""

    name: str
    type: str  # string, textarea, picklist, boolean, int, double, date, reference...
    label: str = ""
    length: int = 0  # characters, for text types; 0 elsewhere
    nillable: bool = True
    defaulted_on_create: bool = False
    createable: bool = True
    updateable: bool = True
    external_id: bool = False
    unique: bool = False
    id_lookup: bool = False
    case_sensitive: bool = False
    restricted_picklist: bool = False
    picklist_values: tuple[str, ...] = ()
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None

    @property
    def required_on_create(self) -> bool:
        """A create without a value fails (REQUIRED_FIELD_MISSING): Salesforce's own rule,
        createable, not nillable and not defaulted on create."""
        return self.createable and not self.nillable and not self.defaulted_on_create

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> FieldDescribe:
        """From one entry of describe's ``fields``."""
        return cls(
            name=str(data["name"]),
            type=str(data.get("type") or ""),
            label=str(data.get("label") or data["name"]),
            length=int(data.get("length") or 0),
            nillable=bool(data.get("nillable", True)),
            defaulted_on_create=bool(data.get("defaultedOnCreate", False)),
            createable=bool(data.get("createable", True)),
            updateable=bool(data.get("updateable", True)),
            external_id=bool(data.get("externalId", False)),
            unique=bool(data.get("unique", False)),
            id_lookup=bool(data.get("idLookup", False)),
            case_sensitive=bool(data.get("caseSensitive", False)),
            restricted_picklist=bool(data.get("restrictedPicklist", False)),
            picklist_values=tuple(
                str(v["value"]) for v in data.get("picklistValues") or () if "value" in v
            ),
            reference_to=tuple(str(t) for t in data.get("referenceTo") or ()),
            relationship_name=data.get("relationshipName") or None,
        )


@dataclass(frozen=True)
class SObjectDescribe:
    """What describe says about one object (DescribeSObjectResult)."""

    name: str
    fields: tuple[FieldDescribe, ...]
    createable: bool = True
    updateable: bool = True

    def field(self, name: str) -> FieldDescribe | None:
        """The field called ``name``; API names are case-insensitive, as in Salesforce."""
        wanted = name.casefold()
        return next((f for f in self.fields if f.name.casefold() == wanted), None)

    def relationship(self, name: str) -> FieldDescribe | None:
        """The lookup field whose relationship name is ``name`` (Account -> AccountId)."""
        wanted = name.casefold()
        return next(
            (f for f in self.fields if (f.relationship_name or "").casefold() == wanted), None
        )

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> SObjectDescribe:
        """From the JSON of ``GET /sobjects/{object}/describe``."""
        return cls(
            name=str(data["name"]),
            fields=tuple(FieldDescribe.from_api(f) for f in data.get("fields") or ()),
            createable=bool(data.get("createable", True)),
            updateable=bool(data.get("updateable", True)),
        )


class Store(Protocol):
    def begin_run(self, job_id: str, stream: str) -> int: ...

    def finish_run(
        self,
        run_id: int,
        outcome: RunOutcome,
        error: str | None = None,
        *,
        tail: RunCounts | None = None,
        usage: ApiUsage | None = None,
    ) -> None:
        """Close a run: its outcome, the counters no acknowledgement carried (``tail``: the
        calls of a batch that ended in failure) and the org's API usage as last seen."""

    def last_api_usage(self) -> ApiUsage | None:
        """The org's API usage as the latest run that saw it recorded it, if any."""

    def load_state(self, stream: str) -> StreamState: ...

    def check_source(self, source: StreamSource) -> None:
        """Raise ``SourceError`` naming the missing table or column."""

    def read_batch(
        self, source: StreamSource, after: Position | None, limit: int
    ) -> list[SourceRow]: ...

    def read_by_keys(self, source: StreamSource, keys: Sequence[str]) -> dict[str, SourceRow]: ...

    def count_after(self, source: StreamSource, position: Position | None) -> int:
        """How many source rows ``read_batch`` would still return after ``position``: one
        statement (a full scan where order_by has no index), so call it once per run."""

    def source_snapshot(self, source: StreamSource) -> str | None:
        """A marker of what the source has committed so far, where it can tell (else None)."""

    def read_late(
        self,
        source: StreamSource,
        snapshot: str,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        """Rows at or before ``upto`` that may have committed after ``snapshot`` was taken:
        they sort behind the position but were not visible when it moved past them."""

    def read_window(
        self,
        source: StreamSource,
        since: SourceValue,
        upto: Position,
        after: Position | None,
        limit: int,
    ) -> list[SourceRow]:
        """Rows whose order_by is at least ``since`` and that sort at or before ``upto``
        (after ``after``), in (order_by, key) order: the lookback window behind a position."""

    def open_errors(self, stream: str, after_id: int = 0, limit: int = 200) -> list[OpenError]: ...

    def known_fingerprints(self, stream: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The fingerprints of what Salesforce last accepted for these records, except for
        records with an open ExportErrors row (those are always sent). One query per call."""

    def acknowledge(self, ack: BatchAck) -> None: ...

    def open_bulk_jobs(self, stream: str) -> list[BulkJob]:
        """The stream's Bulk jobs whose outcome is not acknowledged yet, oldest first."""

    def fail_bulk_job(self, job_id: str, reason: str) -> None:
        """Salesforce never finished the job: its rows go again (not acknowledged)."""


class Sink(Protocol):
    """Salesforce as the core sees it. Request-level retries happen behind this port.

    ``upsert`` returns one result per record, in request order, or raises a
    ``TransientError`` (retry budget spent; the run fails and resumes later), a
    ``TerminalError`` (configuration-class; the run fails with a message for a person) or
    ``ApiBudgetReached`` (the org's API usage is at the line; nothing was sent, the run is
    deferred).
    """

    @property
    def api_calls(self) -> int:
        """Requests charged against the org's API allocation, so far."""

    @property
    def logins(self) -> int:
        """OAuth token requests so far (not charged by Salesforce)."""

    def thread_counts(self) -> tuple[int, int]:
        """(``api_calls``, ``logins``) made on the calling thread alone, so far: streams run
        side by side and batches go in flight on threads of their own, and each
        acknowledgement counts the calls of its own batch and stream, exactly."""

    @property
    def api_usage(self) -> ApiUsage | None:
        """The org's usage as the latest answer to this sink reported it (None before)."""

    def hint_api_usage(self, usage: ApiUsage) -> None:
        """The usage an earlier run last saw: if it was at the budget line, the sink asks
        /limits (one call) before it spends anything else."""

    def upsert(
        self,
        sobject: str,
        external_id_field: str,
        records: Sequence[Mapping[str, Any]],
        *,
        all_or_none: bool,
    ) -> list[UpsertResult]: ...

    def describe(self, sobject: str) -> SObjectDescribe | None:
        """The object's describe, or None when the org has no such object (or the
        integration user cannot see it). Each object is described once per sink."""

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Every record a SOQL query returns (all pages), as Salesforce shapes them:
        ``attributes``, the fields, and a relationship as a nested record or None."""
