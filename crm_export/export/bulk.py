"""A large backlog in skip mode through Bulk API 2.0 ingest jobs (issue 11).

When a stream in skip mode has more than ``[export] bulk_threshold`` rows pending after its
position, CRMExport sends them in upsert jobs of up to ``bulk_max_records`` rows (and 100 MB
of CSV) instead of sObject Collections calls of 200: a million rows cost a few dozen calls
instead of 5,000. Pause mode never comes here: Bulk gives no order and cannot stop at a
record. Rows Salesforce already holds (their fingerprint) are not sent by Bulk either.

Crash safety. A job is created, then recorded in bulk_jobs with the rows it covers (after
the position up to its last row), in the transaction that also commits what building its
CSV decided (rows unchanged, rows the mapping refused), and only then uploaded. Its outcome
(ExportErrors, fingerprints, counters) commits with the position moved over its rows, and
the job marked done. A run that stops in between resumes polling the recorded job: its rows
are not sent again. A job Salesforce never finished (Failed, Aborted, or left Open by a
crash before its upload was closed) is marked failed and its rows go again.

Several jobs may be in flight (``bulk_max_jobs_in_flight``): the next is uploaded while the
previous processes. They are acknowledged oldest first, so the position only ever moves over
the contiguous jobs whose outcome is known.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

import structlog

from crm_export.classify import ErrorClass, classify_record_error
from crm_export.errors import (
    BulkJobFailed,
    BulkJobTimeout,
    BulkUploadRepeated,
    CrmExportError,
    TerminalError,
)
from crm_export.mapping import MappingError, build_payload
from crm_export.ports import (
    BatchAck,
    BulkJob,
    BulkJobInfo,
    BulkSink,
    Position,
    RecordError,
    RunCounts,
    SourceRow,
)
from crm_export.retry import StopRequested

from . import bulk_csv
from .fingerprints import fingerprint
from .outcome import BatchOutcome, Rejected, configuration_error, null_order_error
from .presend import BatchCheck
from .stream_run import StreamRun

log = structlog.get_logger("crm_export.export")

FINAL_STATES = frozenset({"JobComplete", "Failed", "Aborted"})
# Rows read per source query while building a job.
READ_PAGE = 10_000
# A job costs at least four calls (create, upload, close, a poll), six when some of its
# records fail: a tail that six Collections calls carry goes by Collections.
JOB_CALLS = 6
# Salesforce cuts a job into internal batches of 10,000 records; the first poll waits
# bulk_poll_initial_seconds for each (up to bulk_poll_max_seconds).
INTERNAL_BATCH = 10_000
# Jobs tried for one chunk when each took its upload twice (a retried upload that had
# landed): past that the run fails, its rows still after the position.
UPLOAD_ATTEMPTS = 3


def first_poll_delay(records: int, initial: float, cap: float) -> float:
    """How long after closing a job of ``records`` rows its first poll waits."""
    batches = max(1, -(-records // INTERNAL_BATCH))
    return min(cap, initial * batches)


def next_poll_delay(
    previous: float, processed: int, records: int, elapsed: float, initial: float, cap: float
) -> float:
    """The wait before the next poll of a job still processing: what is left at the rate it
    went so far (with a margin, so the poll finds it done), else twice the last wait; never
    below ``initial``, never above ``cap``."""
    if 0 < processed < records and elapsed > 0:
        left = (records - processed) * elapsed / processed * 1.1
        return min(cap, max(initial, left))
    return min(cap, max(initial, previous * 2))


@dataclass
class _Chunk:
    """The rows of one job, while it is built."""

    after: Position | None
    first: Position | None = None
    last: Position | None = None
    # External ID -> CSV line; a later row with the same key replaces the earlier one.
    # (Bytes, and the fingerprints apart, sharing the key: a job holds up to 100,000 rows,
    # and what they cost here is most of crm-export's memory at that size.)
    lines: dict[str, bytes] = field(default_factory=dict)
    # External ID -> fingerprint of the payload sent.
    sent: dict[str, bytes] = field(default_factory=dict)
    # External ID -> record key, for the few keys whose text differs from it.
    keys: dict[str, str] = field(default_factory=dict)
    size: int = 0
    read: int = 0
    unchanged: int = 0
    superseded: int = 0
    failures: list[Rejected] = field(default_factory=list)


@dataclass
class _InFlight:
    job: BulkJob
    # None for a job recorded by an earlier run: what was sent is not known any more, so
    # no fingerprint is kept for its rows (they are compared, and sent, once more later).
    sent: dict[str, bytes] | None
    keys: dict[str, str] = field(default_factory=dict)
    # When this run closed it (monotonic); None for a job recorded by an earlier run.
    closed_at: float | None = None


def send_backlog(run: StreamRun, position: Position | None) -> Position | None:
    """Resume the stream's Bulk jobs in flight, then send its backlog by Bulk when it is
    large enough; the position the reading loop goes on from."""
    if run.bulk is None:
        return position
    recorded = run.store.open_bulk_jobs(run.plan.name)
    policy = run.policy.bulk
    eligible = not run.plan.pause_on_error and policy.threshold > 0
    if not recorded and not eligible:
        return position
    why_not = bulk_csv.bulk_ready(run.plan.fmap)
    if why_not is not None and not recorded:
        log.info("bulk_not_used", stream=run.plan.name, detail=f"{why_not}; Collections instead")
        return position
    sender = _BulkSender(run, run.bulk)
    position = sender.resume(recorded, position)
    if not eligible or why_not is not None:
        return position
    pending = run.store.count_after(run.plan.source, position)
    if pending <= policy.threshold:
        return position
    log.info(
        "bulk_backlog",
        stream=run.plan.name,
        pending=pending,
        threshold=policy.threshold,
        detail="sent through Bulk API 2.0 ingest jobs",
    )
    return sender.send(position, pending)


class _BulkSender:
    def __init__(self, run: StreamRun, bulk: BulkSink) -> None:
        self.run, self.bulk = run, bulk
        self.plan, self.policy = run.plan, run.policy.bulk
        self.clock = run.sender.clock
        self.in_flight: deque[_InFlight] = deque()

    # -- jobs recorded by an earlier run ----------------------------------------------------

    def resume(self, recorded: Sequence[BulkJob], position: Position | None) -> Position | None:
        for job in recorded:
            if job.after != position:
                # The position moved under it (an operator reset the stream): its rows are
                # read again from the new position anyway.
                self._give_up(job, "the stream's position moved while the job was in flight")
                continue
            log.info("bulk_job_resumed", stream=self.plan.name, job_id=job.job_id)
            try:
                info = self.bulk.job_info(job.job_id)
            except TerminalError as exc:
                # Salesforce deletes jobs 7 days after they end: its outcome is lost with it,
                # and its rows (still after the position) go again.
                self._give_up(job, f"Salesforce no longer knows it: {exc}")
                continue
            if info.state == "Open":
                # Recorded, but its upload was never closed: Salesforce will not process it.
                self.bulk.abort_job(job.job_id)
                self._give_up(job, "left Open by a run that stopped before closing it")
                continue
            self.in_flight.append(_InFlight(job, None))
            position = self._finish_oldest()
        return position

    def _give_up(self, job: BulkJob, reason: str) -> None:
        log.warning("bulk_job_abandoned", stream=self.plan.name, job_id=job.job_id, reason=reason)
        self.run.store.fail_bulk_job(job.job_id, reason)

    # -- the backlog ------------------------------------------------------------------------

    def send(self, position: Position | None, pending: int) -> Position | None:
        """Send up to ``pending`` rows after ``position`` in jobs; return the new position."""
        store, source = self.run.store, self.plan.source
        small = JOB_CALLS * self.run.policy.batch_size
        left = pending
        carry: list[SourceRow] = []
        after = position
        while left > small or carry:
            if self.run.should_stop():
                raise StopRequested()
            chunk = _Chunk(after)
            check: BatchCheck | None = None
            while chunk.read < self.policy.max_records:
                if not carry:
                    page = min(READ_PAGE, self.policy.max_records - chunk.read, left)
                    carry = store.read_batch(source, after, page) if page > 0 else []
                    left -= len(carry)
                    if not carry:
                        break
                check = check or self.run.sender.presend.batch_check(self.plan)
                taken = self._fill(chunk, carry, check)
                carry = carry[taken:]
                if chunk.last is not None:
                    after = chunk.last
                if carry:
                    break  # the job is full (bytes)
            if chunk.read == 0:
                break
            position = self._start(chunk) or position
            while len(self.in_flight) >= self.policy.max_jobs_in_flight:
                position = self._finish_oldest()
        while self.in_flight:
            position = self._finish_oldest()
        return position

    def _fill(self, chunk: _Chunk, rows: Sequence[SourceRow], check: BatchCheck) -> int:
        """Add rows to the chunk until it is full; how many were taken."""
        fmap, plan = self.plan.fmap, self.plan
        known: dict[str, bytes] = {}
        if self.run.compare:
            keys = [r.record_key for r in rows if r.key is not None]
            known = self.run.store.known_fingerprints(plan.name, keys) if keys else {}
        taken = 0
        for row in rows:
            if chunk.read >= self.policy.max_records:
                break
            line = b""
            unchanged = False
            if row.key is not None and row.order_value is None:
                chunk.failures.append(Rejected(row, null_order_error(plan)))
            else:
                try:
                    payload = build_payload(fmap, row)
                    digest = fingerprint(fmap, payload)
                    unchanged = known.get(row.record_key) == digest
                    if not unchanged:
                        payload = check(payload)
                        line = bulk_csv.csv_line(bulk_csv.row_cells(fmap, payload)).encode()
                except MappingError as exc:
                    chunk.failures.append(Rejected(row, exc.error))
                else:
                    external_id = str(payload[fmap.external_id_field])
                    size = len(line)
                    full = chunk.size + size > bulk_csv.MAX_UPLOAD_BYTES - 65536
                    if not unchanged and full and chunk.lines:
                        break  # full: this row starts the next job
                    # Two rows with one key are one record: the later row wins, as in
                    # Collections (a job holding the key twice fails both).
                    earlier = chunk.lines.pop(external_id, None)
                    if earlier is not None:
                        chunk.superseded += 1
                        chunk.size -= len(earlier)
                        del chunk.sent[external_id]
                    if unchanged:
                        chunk.unchanged += 1
                    else:
                        chunk.lines[external_id] = line
                        chunk.size += size
                        chunk.sent[external_id] = digest
                        if row.record_key != external_id:
                            chunk.keys[external_id] = row.record_key
            chunk.read += 1
            taken += 1
            chunk.first = chunk.first or row.position
            chunk.last = row.position
        return taken

    def _start(self, chunk: _Chunk) -> Position | None:
        """Create the job, record it (with what building it decided), upload and close it.
        A chunk with nothing to send is acknowledged in its turn, without a job: then the
        position it moved to."""
        assert chunk.first is not None and chunk.last is not None
        plan, run = self.plan, self.run
        decided = BatchAck(
            plan.name,
            run.result.run_id,
            failures=[plan.failure(f.row, f.error, f.payload) for f in chunk.failures],
            counts=RunCounts(
                read=chunk.read - len(chunk.lines),
                unchanged=chunk.unchanged,
                failed=len(chunk.failures),
                superseded=chunk.superseded,
            ),
        )
        run.log_failures(BatchOutcome(failures=chunk.failures))
        if not chunk.lines:
            self._drain()
            decided.position = chunk.last
            run.ack(decided)
            return chunk.last
        if self.in_flight and _shares_a_record(self.in_flight, chunk.sent):
            # A record in a job still processing: Salesforce runs jobs in parallel, so the
            # older version could land last. That job finishes first.
            self._drain()
        records = len(chunk.lines)
        data = b"".join([bulk_csv.header_line(plan.fmap).encode(), *chunk.lines.values()])
        chunk.lines.clear()
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            job_id = self.bulk.create_job(plan.fmap.sobject, plan.fmap.external_id_field)
            job = BulkJob(job_id, plan.name, chunk.after, chunk.first, chunk.last, records)
            decided.bulk_job_started = job
            run.ack(decided)
            # What building the chunk decided is committed with its first job only.
            decided = BatchAck(plan.name, run.result.run_id)
            try:
                self.bulk.upload(job_id, data)
                self.bulk.close_job(job_id)
            except BulkUploadRepeated as exc:
                # A retried upload whose first attempt had landed: this job cannot be
                # closed, a new one takes the same rows (upsert makes that harmless).
                self._abandon(job, "it took its upload twice (a retried upload)")
                if attempt == UPLOAD_ATTEMPTS:
                    raise
                log.warning(
                    "bulk_job_replaced",
                    stream=plan.name,
                    job_id=job_id,
                    detail="its upload landed twice; its rows go in a new job",
                    error=str(exc),
                )
                continue
            except CrmExportError:
                # Not closed: Salesforce will never process it. Its rows go again next run.
                self._abandon(job, "its upload or close failed")
                raise
            break
        log.info(
            "bulk_job_started",
            stream=plan.name,
            job_id=job_id,
            records=job.records,
            bytes=len(data),
        )
        self.in_flight.append(_InFlight(job, chunk.sent, chunk.keys, self.clock.monotonic()))
        return None

    def _abandon(self, job: BulkJob, reason: str) -> None:
        # If the abort fails too, the job stays Open, which Salesforce never processes.
        with contextlib.suppress(CrmExportError):
            self.bulk.abort_job(job.job_id)
        self._give_up(job, reason)

    def _drain(self) -> None:
        while self.in_flight:
            self._finish_oldest()

    # -- outcomes ---------------------------------------------------------------------------

    def _wait(self, flight: _InFlight) -> BulkJobInfo:
        """Poll until the job is final, backing off; a job too slow fails the run (transient:
        it stays recorded and the next run polls it again). A job this run closed is first
        polled when a job its size may be done; one recorded by an earlier run at once."""
        job, policy = flight.job, self.policy
        started = flight.closed_at if flight.closed_at is not None else self.clock.monotonic()
        delay = 0.0
        if flight.closed_at is not None:
            delay = first_poll_delay(job.records, policy.poll_initial, policy.poll_max)
            delay = max(0.0, started + delay - self.clock.monotonic())
        while True:
            if delay > 0:
                self.clock.sleep(delay)
            info = self.bulk.job_info(job.job_id)
            if info.state in FINAL_STATES:
                return info
            if self.run.should_stop():
                raise StopRequested()
            waited = self.clock.monotonic() - started
            delay = next_poll_delay(
                delay, info.processed, job.records, waited, policy.poll_initial, policy.poll_max
            )
            if waited + delay > policy.poll_timeout:
                raise BulkJobTimeout(
                    f"Bulk job {job.job_id} of stream {self.plan.name!r} is still "
                    f"{info.state} ({info.processed} of {job.records} records processed) after "
                    f"{waited:.0f} s ([export] bulk_poll_timeout_seconds). No record failed: "
                    "the next run goes on polling it."
                )

    def _finish_oldest(self) -> Position:
        flight = self.in_flight.popleft()
        job = flight.job
        info = self._wait(flight)
        if info.state != "JobComplete":
            message = info.error_message or "no errorMessage given"
            self.run.store.fail_bulk_job(job.job_id, f"{info.state}: {message}")
            raise BulkJobFailed(
                f"Salesforce ended Bulk job {job.job_id} of stream {self.plan.name!r} "
                f"{info.state}: {message}. None of its {job.records} records was acknowledged: "
                "the next run sends them again."
            )
        try:
            ack = self._outcome(flight, info)
        except CrmExportError:
            self.run.store.fail_bulk_job(job.job_id, "its results stopped the run")
            raise
        ack.position = job.last
        ack.bulk_job_done = job.job_id
        self.run.ack(ack)
        log.info(
            "bulk_job_done",
            stream=self.plan.name,
            job_id=job.job_id,
            exported=ack.counts.exported,
            failed=ack.counts.failed,
        )
        return job.last

    def _outcome(self, flight: _InFlight, info: BulkJobInfo) -> BatchAck:
        """What a complete job's result files say, as one acknowledgement. Records that
        failed for a passing reason (a row lock), and records in no result file, are sent
        again by Collections before it is committed.

        The final poll's counts spare result files: none failed, no failedResults; all
        processed, no unprocessedrecords; all processed and none failed in a job this run
        sent, no successfulResults either, as every row it sent is then known exported."""
        plan, job, run = self.plan, flight.job, self.run
        fmap = plan.fmap
        sent = flight.sent
        ack = BatchAck(plan.name, run.result.run_id)
        exported = failed = 0
        seen: set[str] = set()

        def key_of(external_id: str) -> str:
            return flight.keys.get(external_id, external_id)

        all_processed = info.processed >= job.records
        if sent is not None and all_processed and info.failed == 0:
            successful: Iterable[str] = sent
        else:
            text = self.bulk.results(job.job_id, "successfulResults")
            successful = (
                r.external_id
                for r in bulk_csv.read_results(text, fmap.external_id_field, with_cells=False)
            )
            del text  # the generator holds it until it is read
        for external_id in successful:
            seen.add(external_id)
            exported += 1
            key = key_of(external_id)
            ack.resolved_keys.append(key)
            if sent is not None and external_id in sent:
                ack.fingerprints[key] = sent[external_id]
        again: list[str] = []
        rejected: list[Rejected] = []
        signatures: dict[tuple[str, tuple[str, ...]], int] = {}
        text = self.bulk.results(job.job_id, "failedResults") if info.failed else ""
        for result in bulk_csv.read_results(text, fmap.external_id_field):
            seen.add(result.external_id)
            error = result.error or RecordError("UNKNOWN_EXCEPTION", "no sf__Error given")
            cls = classify_record_error(error)
            if cls is ErrorClass.TRANSIENT:
                again.append(key_of(result.external_id))
                continue
            if cls is ErrorClass.CONFIGURATION:
                raise configuration_error(plan, error)
            signature = (error.code, error.fields)
            signatures[signature] = signatures.get(signature, 0) + 1
            row = SourceRow(key_of(result.external_id), None, {})
            rejected.append(Rejected(row, error, result.cells))
        del text
        failed = len(rejected)
        flood = run.policy.max_identical_errors
        if exported == 0 and any(n >= flood for n in signatures.values()):
            worst = max(signatures, key=lambda s: signatures[s])
            sample = next(r.error for r in rejected if (r.error.code, r.error.fields) == worst)
            raise configuration_error(plan, sample)
        if len(seen) < job.records:
            if not all_processed:
                text = self.bulk.results(job.job_id, "unprocessedrecords")
                for result in bulk_csv.read_results(text, fmap.external_id_field, with_cells=False):
                    if result.external_id not in seen:
                        seen.add(result.external_id)
                        again.append(key_of(result.external_id))
                del text
            again += self._unseen(flight, seen)
        run.log_failures(BatchOutcome(failures=rejected))
        ack.failures = [plan.failure(r.row, r.error, r.payload) for r in rejected]
        ack.counts = RunCounts(read=exported + failed, exported=exported, failed=failed)
        if again:
            self._resend(again, ack)
        return ack

    def _unseen(self, flight: _InFlight, seen: set[str]) -> list[str]:
        """The job's records in no result file. For a job of an earlier run, what it sent
        is read again from its range of source rows."""
        if flight.sent is not None:
            return [flight.keys.get(ext, ext) for ext in flight.sent if ext not in seen]
        missing: list[str] = []
        after: Position | None = flight.job.after
        last = flight.job.last
        # The range held at most this many rows when the job was built.
        budget = max(flight.job.records, self.policy.max_records)
        while budget > 0:
            rows = self.run.store.read_batch(self.plan.source, after, min(READ_PAGE, budget))
            budget -= len(rows)
            for row in rows:
                if row.key is not None and row.record_key not in seen:
                    missing.append(row.record_key)
                if row.position == last:
                    return missing
            if not rows:
                break
            after = rows[-1].position
        return missing

    def _resend(self, keys: list[str], ack: BatchAck) -> None:
        """Send ``keys`` again by Collections (each from its source row now), into ``ack``."""
        run, plan = self.run, self.plan
        log.info(
            "bulk_records_resent",
            stream=plan.name,
            count=len(keys),
            detail="locked or not processed in the Bulk job; sent again by Collections",
        )
        size = run.policy.batch_size
        for start in range(0, len(keys), size):
            rows = list(run.store.read_by_keys(plan.source, keys[start : start + size]).values())
            if not rows:
                continue
            outcome = run.send(rows, all_or_none=False)
            run.log_failures(outcome)
            part = outcome.to_ack(plan, run.result.run_id, rows, run.now(), move_position=False)
            ack.resolved_keys += part.resolved_keys
            ack.failures += part.failures
            ack.fingerprints.update(part.fingerprints)
            ack.counts += part.counts


def _shares_a_record(flights: Sequence[_InFlight], external_ids: Collection[str]) -> bool:
    """Whether a job in flight (or one whose rows are unknown: resumed) holds one of these
    external IDs. Compared without case: an external ID field is case-insensitive unless
    marked case-sensitive, and a needless wait is harmless where a race is not."""
    wanted = {e.casefold() for e in external_ids}
    return any(f.sent is None or any(e.casefold() in wanted for e in f.sent) for f in flights)
