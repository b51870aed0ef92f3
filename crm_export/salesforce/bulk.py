"""``SalesforceBulk``: the core's BulkSink over Bulk API 2.0 ingest (salesforce-api.md B6).

Every call goes through the sink's session and request path, so each one (create, upload,
close, every poll, every result file) is counted in the run's API calls, retried on
transient faults, re-authenticated and governed by the API budget, exactly like an upsert.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from crm_export.errors import BulkUploadRepeated, CrmExportError, ServerError
from crm_export.ports import BulkJobInfo
from crm_export.salesforce.answers import json_body
from crm_export.salesforce.sink import SalesforceSink

RESULT_KINDS = ("successfulResults", "failedResults", "unprocessedrecords")
# Closing a job that took two uploads: 400 INVALIDJOB "Found multipe contents for job: <id>,
# please 'Close' / 'Abort' / 'Delete' the current Job then create a new Job ..." (typo
# Salesforce's; reference B6, salesforce.stackexchange.com/questions/231917).
_MULTIPLE_CONTENTS = re.compile(r"INVALIDJOB.*multip?l?e contents", re.IGNORECASE | re.DOTALL)


def _info(data: Any, job_id: str) -> BulkJobInfo:
    if not isinstance(data, Mapping) or not data.get("state"):
        raise ServerError(f"unexpected answer about Bulk job {job_id}: {str(data)[:200]}")
    message = data.get("errorMessage")
    return BulkJobInfo(
        job_id=str(data.get("id") or job_id),
        state=str(data["state"]),
        processed=int(data.get("numberRecordsProcessed") or 0),
        failed=int(data.get("numberRecordsFailed") or 0),
        error_message=str(message) if message else None,
    )


class SalesforceBulk:
    def __init__(self, sink: SalesforceSink) -> None:
        self.sink = sink

    def create_job(self, sobject: str, external_id_field: str) -> str:
        body = {
            "object": sobject,
            "operation": "upsert",
            "externalIdFieldName": external_id_field,
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        }
        data = json_body(self.sink.raw_request("POST", "jobs/ingest", json=body))
        info = _info(data, "(new)")
        if info.state != "Open":
            raise ServerError(f"a new Bulk job is {info.state}, not Open: {str(data)[:200]}")
        return info.job_id

    def upload(self, job_id: str, data: bytes) -> None:
        response = self.sink.raw_request(
            "PUT",
            f"jobs/ingest/{job_id}/batches",
            data=data,
            headers={"Content-Type": "text/csv; charset=UTF-8"},
        )
        # Salesforce answers exactly 201 when it has the data (upload-job-data).
        if response.status_code != 201:
            raise ServerError(
                f"the upload of Bulk job {job_id} answered {response.status_code}, not 201"
            )

    def _set_state(self, job_id: str, state: str) -> BulkJobInfo:
        response = self.sink.raw_request("PATCH", f"jobs/ingest/{job_id}", json={"state": state})
        return _info(json_body(response), job_id)

    def close_job(self, job_id: str) -> BulkJobInfo:
        try:
            return self._set_state(job_id, "UploadComplete")
        except CrmExportError as exc:
            if _MULTIPLE_CONTENTS.search(str(exc)):
                raise BulkUploadRepeated(
                    f"Bulk job {job_id} holds its upload twice (a retried upload whose first "
                    f"attempt had reached Salesforce): {exc}"
                ) from exc
            raise

    def abort_job(self, job_id: str) -> BulkJobInfo:
        return self._set_state(job_id, "Aborted")

    def job_info(self, job_id: str) -> BulkJobInfo:
        return _info(json_body(self.sink.raw_request("GET", f"jobs/ingest/{job_id}")), job_id)

    def results(self, job_id: str, kind: str) -> str:
        if kind not in RESULT_KINDS:
            raise ValueError(f"no such Bulk result file: {kind}")
        response = self.sink.raw_request("GET", f"jobs/ingest/{job_id}/{kind}")
        response.encoding = "utf-8"
        return response.text
