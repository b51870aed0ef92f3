"""Bulk API 2.0 ingest jobs: create, upload CSV, close, process, and the result CSVs.

A job takes one upload. A closed job is processed on the org's own clock, as a real org
processes it whether or not anyone polls: from the moment it is due (at once, or
``bulk_job_seconds`` after UploadComplete) it gets through ``bulk_records_per_second``
rows a second, in internal batches of ``bulk_batch_records`` rows (10,000, as Salesforce
cuts them). No worker thread is needed: each request the sandbox handles first catches
every due job up to where the clock says it is, so ``numberRecordsProcessed`` grows batch
by batch while the job is InProgress, however often (or seldom) a client asks. Results are
served once the job is in a final state.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crm_export.sandbox.dml import (
    ByExternalId,
    RecordError,
    RequestError,
    Saver,
    SaveResult,
    json_text,
    relationship_column,
    sf_datetime,
)
from crm_export.sandbox.faults import FaultInjector
from crm_export.sandbox.org import OrgModel, SObjectDef
from crm_export.sandbox.storage import RecordStore, Transaction

OPERATIONS = frozenset({"insert", "update", "upsert", "delete", "hardDelete"})
DELIMITERS = {
    "COMMA": ",",
    "TAB": "\t",
    "PIPE": "|",
    "SEMICOLON": ";",
    "CARET": "^",
    "BACKQUOTE": "`",
}
OPEN, UPLOAD_COMPLETE, IN_PROGRESS = "Open", "UploadComplete", "InProgress"
JOB_COMPLETE, FAILED, ABORTED = "JobComplete", "Failed", "Aborted"
TERMINAL = frozenset({JOB_COMPLETE, FAILED, ABORTED})
RESULT_KINDS = frozenset({"successfulresults", "failedresults", "unprocessedrecords"})
# "A request can provide CSV data that does not in total exceed 150 MB of base64 encoded
# content" (upload-job-data): the limit is on the data once base64-encoded.
MAX_UPLOAD_BASE64_BYTES = 150 * 1024 * 1024
# Bulk CSV conventions: an empty cell leaves the field alone, #N/A sets it to null.
NULL_CELL = "#N/A"


@dataclass
class IngestJob:
    id: str
    object: str
    operation: str
    external_id_field: str | None
    column_delimiter: str
    line_ending: str
    api_version: str
    created_by: str
    created_date: str
    state: str = OPEN
    modstamp: str = ""
    uploads: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    successful: list[list[str]] = field(default_factory=list)
    failed: list[list[str]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)
    processed: int = 0
    error_message: str | None = None
    due_at: float | None = None
    processing_ms: int = 0
    # Set when processing starts: the parsed rows, how far processing got, and how often
    # each upsert key occurs in the whole job.
    rows: list[list[str]] | None = None
    cursor: int = 0
    key_counts: dict[Any, int] = field(default_factory=dict)
    busy: bool = False  # a request thread is running its next batch

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": self.id,
            "operation": self.operation,
            "object": self.object,
            "createdById": self.created_by,
            "createdDate": self.created_date,
            "systemModstamp": self.modstamp or self.created_date,
            "state": self.state,
            "externalIdFieldName": self.external_id_field,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.api_version),
            "jobType": "V2Ingest",
            "contentUrl": f"services/data/v{self.api_version}/jobs/ingest/{self.id}/batches",
            "lineEnding": self.line_ending,
            "columnDelimiter": self.column_delimiter,
            "numberRecordsProcessed": self.processed,
            "numberRecordsFailed": len(self.failed),
            "retries": 0,
            "totalProcessingTime": self.processing_ms,
            "apiActiveProcessingTime": self.processing_ms,
            "apexProcessingTime": 0,
        }
        if self.error_message is not None:
            info["errorMessage"] = self.error_message
        return info


def base64_size(raw: int) -> int:
    """Bytes of ``raw`` bytes once base64-encoded (4 for every 3, padded)."""
    return 4 * ((raw + 2) // 3)


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


class BulkJobs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, IngestJob] = {}

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()

    def all(self) -> list[IngestJob]:
        with self._lock:
            return list(self._jobs.values())

    def get(self, job_id: str) -> IngestJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise RequestError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        if job.state not in TERMINAL:
            raise RequestError(400, "INVALIDJOBSTATE", f"Job {job_id} is not in a terminal state")
        with self._lock:
            self._jobs.pop(job_id, None)

    def create(
        self, org: OrgModel, body: Any, job_id: str, user_id: str, version: str
    ) -> IngestJob:
        if not isinstance(body, dict):
            raise RequestError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        operation = body.get("operation")
        if operation not in OPERATIONS:
            raise RequestError(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
        sobject = org.sobject(str(body.get("object", "")))
        if sobject is None:
            raise RequestError(
                400, "INVALIDENTITY", f"sObject type '{body.get('object')}' is not supported"
            )
        external_id = body.get("externalIdFieldName")
        if operation == "upsert":
            if not external_id:
                raise RequestError(
                    400,
                    "INVALIDJOB",
                    f"External ID was blank for {sobject.name}. An External ID must be specified "
                    "for upsert.",
                )
            fdef = sobject.field(str(external_id))
            if fdef is None or not (fdef.external_id or fdef.name == "Id"):
                raise RequestError(
                    400,
                    "INVALIDJOB",
                    f"InvalidJob : Field name provided, {external_id} is not an External ID or "
                    f"indexed field for {sobject.name}",
                )
            external_id = fdef.name
        delimiter = body.get("columnDelimiter", "COMMA")
        line_ending = body.get("lineEnding", "LF")
        if delimiter not in DELIMITERS or line_ending not in {"LF", "CRLF"}:
            raise RequestError(
                400, "INVALIDJOB", "InvalidJob : unsupported delimiter or line ending"
            )
        if body.get("contentType", "CSV") != "CSV":
            raise RequestError(400, "INVALIDJOB", "InvalidJob : contentType must be CSV")
        now = sf_datetime()
        job = IngestJob(
            id=job_id,
            object=sobject.name,
            operation=str(operation),
            external_id_field=external_id if operation == "upsert" else None,
            column_delimiter=str(delimiter),
            line_ending=str(line_ending),
            api_version=version,
            created_by=user_id,
            created_date=now,
        )
        with self._lock:
            self._jobs[job_id] = job
        return job

    def upload(self, job_id: str, data: bytes) -> None:
        job = self.get(job_id)
        if job.state != OPEN:
            raise RequestError(
                409, "INVALIDJOBSTATE", f"Job {job_id} is not in the Open state; data is closed"
            )
        if base64_size(len(data)) > MAX_UPLOAD_BASE64_BYTES:
            raise RequestError(
                413, "FILE_SIZE_LIMIT_EXCEEDED", "the upload exceeds 150 MB once base64-encoded"
            )
        text = data.decode("utf-8-sig", errors="replace")
        with self._lock:
            # A second upload is accepted here; closing the job then fails.
            job.uploads.append(text)

    def set_state(self, job_id: str, body: Any, delay_seconds: float) -> IngestJob:
        job = self.get(job_id)
        state = body.get("state") if isinstance(body, dict) else None
        with self._lock:
            if state == UPLOAD_COMPLETE:
                if job.state != OPEN:
                    raise RequestError(
                        400, "INVALIDJOBSTATE", f"Job {job_id} is {job.state}; it cannot be closed"
                    )
                if len(job.uploads) > 1:
                    # Salesforce's words, typo and 15-character id included.
                    raise RequestError(
                        400,
                        "INVALIDJOB",
                        f"Found multipe contents for job: <{job_id[:15]}>, please 'Close' / "
                        "'Abort' / 'Delete' the current Job then create a new Job and make "
                        "sure you only do 'PUT' once on a given Job.",
                    )
                job.state = UPLOAD_COMPLETE
                job.due_at = time.monotonic() + delay_seconds
            elif state == ABORTED:
                if job.state in TERMINAL:
                    raise RequestError(
                        400, "INVALIDJOBSTATE", f"Job {job_id} is {job.state}; it cannot be aborted"
                    )
                job.state = ABORTED
                job.due_at = None
                if job.rows is None:
                    job.header, job.rows = _parse_uploads(job)
                job.unprocessed = job.rows[job.cursor :]
            else:
                raise RequestError(
                    400,
                    "INVALIDJOBSTATE",
                    # Sandbox wording (Salesforce's is not documented): no Python repr.
                    f"Invalid state {json_text(state)}: use UploadComplete or Aborted",
                )
            job.modstamp = sf_datetime()
        return job

    def due_jobs(self, now: float) -> list[IngestJob]:
        """Move closed jobs along: to InProgress, and return those due to be processed."""
        due = []
        with self._lock:
            for job in self._jobs.values():
                if job.state not in {UPLOAD_COMPLETE, IN_PROGRESS} or job.due_at is None:
                    continue
                if now >= job.due_at and not job.busy:
                    job.busy = True
                    due.append(job)
                job.state = IN_PROGRESS
        return due

    def release(self, job: IngestJob) -> None:
        with self._lock:
            job.busy = False

    def results_csv(self, job_id: str, kind: str) -> str:
        job = self.get(job_id)
        if kind not in RESULT_KINDS:
            raise RequestError(404, "NOT_FOUND", "The requested resource does not exist")
        if job.state not in TERMINAL:
            raise RequestError(
                400,
                "INVALIDJOBSTATE",
                f"Job {job_id} is {job.state}: its results are available once it is "
                "JobComplete, Failed or Aborted",
            )
        with self._lock:
            header = job.header or _peek_header(job)
            if kind == "successfulresults":
                return _csv_text(["sf__Id", "sf__Created", *header], job.successful)
            if kind == "failedresults":
                return _csv_text(["sf__Id", "sf__Error", *header], job.failed)
            return _csv_text(header, job.unprocessed)


def _peek_header(job: IngestJob) -> list[str]:
    header, _ = _parse_uploads(job)
    return header


def _parse_uploads(job: IngestJob) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the job's upload (a job that closed has one at most)."""
    if not job.uploads:
        return [], []
    reader = csv.reader(
        io.StringIO(job.uploads[0], newline=""), delimiter=DELIMITERS[job.column_delimiter]
    )
    parsed = list(reader)
    if not parsed:
        return [], []
    return parsed[0], [row for row in parsed[1:] if row]


@dataclass(frozen=True)
class _Column:
    field: str | None  # the target field, None for the match column of delete/update
    relationship: tuple[Any, ...] | None = None


def process_job(
    job: IngestJob,
    org: OrgModel,
    store: RecordStore,
    faults: FaultInjector,
    lock_faults: bool,
    batch_records: int,
    records_per_second: float,
    now: float,
    on_result: Callable[[IngestJob, SaveResult, dict[str, str], Transaction], None],
    on_done: Callable[[Transaction], None],
) -> None:
    """Catch a due job up with the clock: run every internal batch that ``now`` seconds at
    ``records_per_second`` since the job became due have had time for. A batch is done
    whole or not yet (numberRecordsProcessed moves a batch at a time); the job is
    JobComplete after its last batch."""
    if job.rows is None and not _prepare(job, org):
        return
    assert job.rows is not None and job.due_at is not None
    total = len(job.rows)
    reached = min(total, int(max(0.0, now - job.due_at) * records_per_second))
    while job.state == IN_PROGRESS and job.cursor < total:
        if job.cursor + batch_records > reached and reached < total:
            break  # the next batch is still being processed
        _process_batch(job, org, store, faults, lock_faults, batch_records, on_result, on_done)
    if job.state == IN_PROGRESS and job.cursor >= total:
        job.state = JOB_COMPLETE
        job.due_at = None
        job.modstamp = sf_datetime()


def _prepare(job: IngestJob, org: OrgModel) -> bool:
    """Parse the job's upload when processing starts; False if that fails the job."""
    sobject = org.sobject(job.object)
    job.header, job.rows = _parse_uploads(job)
    problem = _check_header(job, org, sobject, job.header)
    if problem is not None or sobject is None:
        _fail(job, problem)
        return False
    job.key_counts = _key_counts(job, sobject, job.header, job.rows)
    return True


def _process_batch(
    job: IngestJob,
    org: OrgModel,
    store: RecordStore,
    faults: FaultInjector,
    lock_faults: bool,
    batch_records: int,
    on_result: Callable[[IngestJob, SaveResult, dict[str, str], Transaction], None],
    on_done: Callable[[Transaction], None],
) -> None:
    """Run the job's next internal batch: each row commits or fails on its own, as in
    Bulk API 2.0."""
    assert job.rows is not None
    started = time.monotonic()
    sobject = org.sobject(job.object)
    if sobject is None:
        _fail(job, None)
        return
    header = job.header
    columns = [_column(org, sobject, name) for name in header]
    match_name = (
        "Id" if job.operation in {"update", "delete", "hardDelete"} else job.external_id_field
    )
    match_index = _index_of(header, match_name)
    match_field = sobject.field(match_name) if match_name else None
    batch = job.rows[job.cursor : job.cursor + batch_records]

    with store.transaction() as tx:
        saver = Saver(org, sobject, tx, faults if lock_faults else None)
        for row in batch:
            cells = dict(zip(header, row + [""] * (len(header) - len(row)), strict=False))
            match_value = (
                row[match_index] if match_index is not None and match_index < len(row) else ""
            )
            duplicate = (
                match_field is not None
                and match_index is not None
                and job.operation == "upsert"
                and job.key_counts.get(_fold_key(row, match_index, match_field.case_sensitive), 0)
                > 1
            )
            if duplicate:
                result = SaveResult(
                    False,
                    errors=(
                        RecordError(
                            "DUPLICATE_VALUE", f"Duplicate external id specified: {match_value}"
                        ),
                    ),
                )
            elif job.operation in {"delete", "hardDelete"}:
                result = saver.delete(match_value)
            else:
                values = _row_values(
                    columns, row, skip=match_index if job.operation == "update" else None
                )
                if job.operation == "insert":
                    result = saver.save(values, operation="insert")
                else:
                    assert match_field is not None
                    values.pop(match_field.name, None)
                    result = saver.save(
                        values,
                        operation=job.operation,
                        match_field=match_field,
                        match_value=match_value,
                    )
            job.processed += 1
            if result.success:
                job.successful.append(
                    [result.id or "", "true" if result.created else "false", *row]
                )
            else:
                error = "; ".join(e.bulk_text() for e in result.errors)
                job.failed.append([result.id or "", error, *row])
            on_result(job, result, cells, tx)
        on_done(tx)
    job.cursor += len(batch)
    job.processing_ms += int((time.monotonic() - started) * 1000)
    job.modstamp = sf_datetime()


def _fail(job: IngestJob, problem: str | None) -> None:
    job.state = FAILED
    job.due_at = None
    job.error_message = problem or f"InvalidBatch : sObject type '{job.object}' is gone"
    job.unprocessed = (job.rows or [])[job.cursor :]
    job.modstamp = sf_datetime()


def _index_of(header: list[str], name: str | None) -> int | None:
    return next(
        (i for i, column in enumerate(header) if column.lower() == (name or "").lower()), None
    )


def _key_counts(
    job: IngestJob, sobject: SObjectDef, header: list[str], rows: list[list[str]]
) -> dict[Any, int]:
    """How often each upsert or insert key occurs in the whole job, for duplicate keys."""
    match_index = _index_of(header, job.external_id_field)
    match_field = sobject.field(job.external_id_field) if job.external_id_field else None
    counts: dict[Any, int] = {}
    if job.operation in {"upsert", "insert"} and match_index is not None and match_field:
        for row in rows:
            key = _fold_key(row, match_index, match_field.case_sensitive)
            if key:
                counts[key] = counts.get(key, 0) + 1
    return counts


def _fold_key(row: list[str], index: int, case_sensitive: bool) -> str:
    value = row[index] if index < len(row) else ""
    return value if case_sensitive else value.casefold()


def _check_header(
    job: IngestJob, org: OrgModel, sobject: SObjectDef | None, header: list[str]
) -> str | None:
    if sobject is None:
        return None
    if not header:
        return "InvalidBatch : Failed to parse the CSV: no header row"
    lowered = [name.lower() for name in header]
    if job.operation in {"delete", "hardDelete"} and lowered != ["id"]:
        return "InvalidBatch : The 'delete' batch must contain only the 'Id' column"
    if job.operation == "update" and "id" not in lowered:
        return "InvalidBatch : Field name not found : Id"
    if job.operation == "upsert" and (job.external_id_field or "").lower() not in lowered:
        return f"InvalidBatch : Field name not found : {job.external_id_field}"
    for name in header:
        try:
            _column(org, sobject, name)
        except RequestError:
            return f"InvalidBatch : Field name not found : {name}"
    return None


def _column(org: OrgModel, sobject: SObjectDef, name: str) -> _Column:
    relationship, dot, target_field = name.partition(".")
    if dot:
        ref, target, via = relationship_column(org, sobject, relationship, target_field)
        return _Column(ref.name, (target, via))
    fdef = sobject.field(name)
    if fdef is None:
        raise RequestError(400, "INVALID_FIELD", f"No such column '{name}'")
    return _Column(fdef.name)


def _row_values(columns: list[_Column], row: list[str], skip: int | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for index, (column, cell) in enumerate(zip(columns, row, strict=False)):
        if index == skip or column.field is None or cell == "":
            continue
        value: Any = None if cell == NULL_CELL else cell
        if column.relationship is not None and value is not None:
            target, via = column.relationship
            value = ByExternalId(target, via, value)
        values[column.field] = value
    return values
