"""Everything one running sandbox holds: org model, records, faults, tokens, jobs, activity."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crm_export.sandbox.activity import Activity
from crm_export.sandbox.auth import TokenStore
from crm_export.sandbox.bulk import BulkJobs, IngestJob, process_job
from crm_export.sandbox.dml import SaveResult
from crm_export.sandbox.faults import FaultInjector
from crm_export.sandbox.org import OrgModel, load_org_source, merge_patch, parse_org
from crm_export.sandbox.storage import RecordStore, Transaction


class SandboxState:
    def __init__(
        self,
        *,
        org: str | Path | Mapping[str, Any] | None = None,
        faults: Mapping[str, Any] | None = None,
        seed: int = 0,
        data: Path | None = None,
    ) -> None:
        self._org = parse_org(load_org_source(org))
        self._initial_faults = dict(faults or {})
        self.faults = FaultInjector(seed, self._initial_faults)
        self.store = RecordStore(data)
        self.tokens = TokenStore()
        self.jobs = BulkJobs()
        self.activity = Activity()
        self.base_url = ""
        self.ca_path = ""
        self._inflight = 0
        self._inflight_lock = threading.Lock()

    @property
    def org(self) -> OrgModel:
        return self._org

    def replace_org(self, source: str | Path | Mapping[str, Any]) -> OrgModel:
        self._org = parse_org(load_org_source(source))
        return self._org

    def patch_org(self, patch: Mapping[str, Any]) -> OrgModel:
        self._org = parse_org(merge_patch(self._org.raw, patch))
        return self._org

    def reset(self) -> None:
        """Forget records, jobs, logs and counters, and replay fault draws from the start.

        The org model, fault options and issued tokens stay as they are.
        """
        with self.store.lock:
            self.store.clear()
            self.jobs.clear()
            self.activity.reset()
            self.faults.reset_draws()

    def close(self) -> None:
        self.store.close()

    # ---- concurrency gauge for max_concurrent_requests

    def enter_request(self) -> int:
        with self._inflight_lock:
            self._inflight += 1
            return self._inflight

    def leave_request(self) -> None:
        with self._inflight_lock:
            self._inflight -= 1

    # ---- bulk

    def advance_jobs(self) -> None:
        """Catch every due Bulk job up with the org's clock."""
        now = time.monotonic()
        for job in self.jobs.due_jobs(now):
            try:
                process_job(
                    job,
                    self.org,
                    self.store,
                    self.faults,
                    self.faults.applies_to(f"/jobs/ingest/{job.id}"),
                    self.faults.config.bulk_batch_records,
                    self.faults.config.bulk_records_per_second,
                    now,
                    self._bulk_result,
                    self.publish,
                )
            finally:
                self.jobs.release(job)

    def _bulk_result(
        self, job: IngestJob, result: SaveResult, cells: dict[str, str], tx: Transaction
    ) -> None:
        external_id_field = job.external_id_field or "Id"
        self.log_result(
            tx,
            result,
            sobject=job.object,
            external_id_field=external_id_field,
            external_id=cells.get(external_id_field, ""),
            endpoint=f"bulk_{job.operation.lower()}",
            request=None,
            job_id=job.id,
            payload=cells,
            action="deleted" if job.operation in {"delete", "hardDelete"} else None,
        )

    # ---- write log

    def log_result(
        self,
        tx: Transaction,
        result: SaveResult,
        *,
        sobject: str,
        external_id_field: str,
        external_id: Any,
        endpoint: str,
        request: int | None,
        payload: Any,
        job_id: str | None = None,
        action: str | None = None,
    ) -> None:
        """Log a record's outcome; writes reach the log only if ``tx`` commits."""
        entry: dict[str, Any] = {
            "sobject": sobject,
            "external_id_field": external_id_field,
            "external_id": external_id,
            "endpoint": endpoint,
            "request": request,
        }
        if job_id is not None:
            entry["job_id"] = job_id
        if result.fault:
            self.activity.count_fault(result.fault)
        if result.success:
            entry["id"] = result.id
            entry["action"] = action or ("created" if result.created else "updated")
            tx.on_commit.append(entry)
        else:
            entry["errors"] = [e.result_json() for e in result.errors]
            entry["record"] = payload
            self.activity.record_rejection(entry)

    def publish(self, tx: Transaction) -> None:
        for entry in tx.on_commit:
            self.activity.record_write(entry)
        tx.on_commit.clear()
