"""The daemon's counters as a job run feeds them (the scrape of a real daemon is in
tests/daemon/test_daemon_metrics.py)."""

from __future__ import annotations

import pytest

from crm_export.export import StreamProgress, StreamResult
from crm_export.metrics import Metrics, call_kind, status_class
from crm_export.ports import ApiUsage, JobId, RunCounts, RunOutcome

BASE = "https://acme.my.salesforce.com"


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/services/oauth2/token", "login"),
        ("/services/Soap/u/64.0", "login"),
        ("/services/data/v64.0/composite/sobjects/Contact/External_Id__c", "upsert"),
        ("/services/data/v64.0/composite/sobjects", "composite"),
        ("/services/data/v64.0/limits/", "limits"),
        ("/services/data/v64.0/sobjects/Contact/describe", "describe"),
        ("/services/data/v64.0/sobjects", "describe"),
        ("/services/data/v64.0/query?q=SELECT+Id+FROM+Contact", "query"),
        ("/services/data/v64.0/jobs/ingest/750xx/batches", "bulk"),
        ("/services/oauth2/userinfo", "identity"),
        ("/services/data/v64.0/sobjects/Contact/003xx", "other"),
    ],
)
def test_each_call_is_labelled_by_what_it_does(path: str, kind: str) -> None:
    assert call_kind(BASE + path) == kind


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 204, 401, 503, None)] == [
        "2xx",
        "2xx",
        "4xx",
        "5xx",
        "none",
    ]


def report(metrics: Metrics, run_id: int, read: int, failed: int, finished: bool = False) -> None:
    counts = RunCounts(read=read, exported=read - failed, failed=failed)
    result = StreamResult(JobId.EXPORT, "contacts", run_id, counts=counts)
    if finished:
        result.outcome = RunOutcome.COMPLETED
    metrics.progress(StreamProgress(result, 500, finished))


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_records_are_counted_once_however_often_a_run_reports() -> None:
    metrics = Metrics()
    metrics.know_streams(["contacts", "deals"])
    assert value(metrics, "crm_export_records_total", stream="deals", outcome="exported") == 0
    report(metrics, 1, 0, 0)
    report(metrics, 1, 200, 1)
    report(metrics, 1, 400, 3)
    report(metrics, 1, 400, 3, finished=True)
    report(metrics, 2, 0, 0)  # the next run starts from nothing again
    report(metrics, 2, 50, 0)
    exported = value(metrics, "crm_export_records_total", stream="contacts", outcome="exported")
    assert exported == 397 + 50
    assert value(metrics, "crm_export_records_total", stream="contacts", outcome="failed") == 3
    labels = {"job": "CRMExport", "stream": "contacts", "outcome": "completed"}
    assert value(metrics, "crm_export_runs_total", **labels) == 1


def test_calls_retries_and_the_runner_role() -> None:
    metrics = Metrics()
    metrics.salesforce_call("POST", BASE + "/services/oauth2/token", 0.2, 200)
    metrics.salesforce_call("PATCH", BASE + "/services/data/v64.0/composite/sobjects/C/E", 1.5, 503)
    metrics.salesforce_call(
        "PATCH", BASE + "/services/data/v64.0/composite/sobjects/C/E", 3.0, None
    )
    metrics.salesforce_retry("ServerError")
    metrics.record_retry("contacts", "UNABLE_TO_LOCK_ROW")
    metrics.record_retry("contacts", "UNABLE_TO_LOCK_ROW")
    assert value(metrics, "crm_export_salesforce_calls_total", kind="upsert", status="5xx") == 1
    assert value(metrics, "crm_export_salesforce_calls_total", kind="upsert", status="none") == 1
    assert value(metrics, "crm_export_salesforce_call_seconds_count", kind="upsert") == 2
    assert value(metrics, "crm_export_salesforce_call_seconds_sum", kind="upsert") == 4.5
    assert value(metrics, "crm_export_retries_total", error_class="ServerError") == 1
    retried = {"stream": "contacts", "code": "UNABLE_TO_LOCK_ROW"}
    assert value(metrics, "crm_export_record_retries_total", **retried) == 2
    assert value(metrics, "crm_export_runner_active") == 0
    # Nothing is read from a state database until the daemon is the active runner.
    assert value(metrics, "crm_export_state_database_up") is None


class Sink:
    def __init__(self, usage: ApiUsage | None) -> None:
        self.api_usage = usage


def test_the_org_usage_is_the_last_one_salesforce_reported() -> None:
    metrics = Metrics()
    assert value(metrics, "crm_export_org_api_usage_percent") is None  # no call yet
    metrics.sink_opened(Sink(ApiUsage(4_500, 5_000)))  # type: ignore[arg-type]
    assert value(metrics, "crm_export_org_api_usage_percent") == 90.0
    # A run that makes no call learns nothing new: the last usage seen stays.
    metrics.sink_opened(Sink(None))  # type: ignore[arg-type]
    assert value(metrics, "crm_export_org_api_usage_percent") == 90.0
