"""The export core's two narrow ports, and the plain values that cross them.

Nothing here imports a database driver or an HTTP client: the core sees a ``Store`` (source
rows, positions, ExportErrors, runs) and a ``Sink`` (Salesforce upserts) and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    read: int = 0
    exported: int = 0
    failed: int = 0
    skipped: int = 0
    api_calls: int = 0


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

    def finish_run(self, run_id: int, outcome: RunOutcome, error: str | None = None) -> None: ...

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

    def open_errors(self, stream: str, after_id: int = 0, limit: int = 200) -> list[OpenError]: ...

    def acknowledge(self, ack: BatchAck) -> None: ...


class Sink(Protocol):
    """Salesforce as the core sees it. Request-level retries happen behind this port.

    ``upsert`` returns one result per record, in request order, or raises a
    ``TransientError`` (budget spent; the run fails and resumes later) or a
    ``TerminalError`` (configuration-class; the run fails with a message for a person).
    """

    @property
    def api_calls(self) -> int: ...

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
