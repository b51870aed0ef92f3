"""A job run tells its ``Watch`` every HTTP exchange with the org, every retry and each
stream's progress; checked against the sandbox org's own counters, over real HTTPS."""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from crm_export.export import StreamProgress
from crm_export.jobs import JOBS
from crm_export.ports import ApiUsage, JobId, RunOutcome, Sink
from crm_export.watch import Watch, Watches
from tests.export.export_scenario import Scenario


class Recorder(Watch):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, int | None]] = []
        self.retries: list[str] = []
        self.sinks: list[Sink] = []
        self.progresses: list[StreamProgress] = []

    def progress(self, progress: StreamProgress) -> None:
        self.progresses.append(progress)

    def salesforce_call(self, method: str, url: str, seconds: float, status: int | None) -> None:
        self.calls.append((method, urlsplit(url).path, seconds, status))

    def salesforce_retry(self, error_class: str) -> None:
        self.retries.append(error_class)

    def sink_opened(self, sink: Sink) -> None:
        self.sinks.append(sink)


class Broken(Watch):
    def salesforce_call(self, *args: Any) -> None:
        raise RuntimeError("a watcher's bug")


def test_every_call_and_retry_reaches_the_watch(scenario: Scenario) -> None:
    scenario.add_many(range(1, 451))
    scenario.sandbox.set_faults({"http_error_rate": {"503": 0.3}, "paths": "/composite/"})
    recorder = Recorder()
    [result] = JOBS[JobId.EXPORT](scenario.config(), None, Watches([Broken(), recorder]))
    assert result.outcome is RunOutcome.COMPLETED and result.counts.exported == 450

    counters = scenario.sandbox.counters()
    by_path = Counter((method, path) for method, path, _, _ in recorder.calls)
    assert by_path == {
        ("POST", "/services/oauth2/token"): counters["calls"]["token"],
        # The API version check at login (the versions list: no API call for the org).
        ("GET", "/services/data/"): counters["calls"]["versions"],
        # The exporter's describe of the object, once per run, before the first send.
        ("GET", "/services/data/v64.0/sobjects/Contact/describe"): counters["calls"]["describe"],
        (
            "PATCH",
            "/services/data/v64.0/composite/sobjects/Contact/External_Id__c",
        ): counters["calls"]["composite_upsert"],
    }
    statuses = Counter(status for *_, status in recorder.calls)
    assert statuses == {200: len(recorder.calls) - counters["faults"]["http_503"]} | {
        503: counters["faults"]["http_503"]
    }
    assert counters["faults"]["http_503"] > 0
    assert recorder.retries == ["ServerError"] * counters["faults"]["http_503"]
    assert all(seconds > 0 for _, _, seconds, _ in recorder.calls)
    # The watch is handed the run's sink, which has seen the org's API usage.
    [sink] = recorder.sinks
    assert sink.api_usage == ApiUsage(counters["api_usage"]["used"], counters["api_usage"]["max"])
    assert recorder.progresses[0].pending == 450 and recorder.progresses[-1].finished


class RecordRetries(Watch):
    def __init__(self) -> None:
        self.retried: Counter[tuple[str, str]] = Counter()

    def record_retry(self, stream: str, code: str) -> None:
        self.retried[(stream, code)] += 1


def test_each_record_sent_again_after_a_row_lock_reaches_the_watch(scenario: Scenario) -> None:
    # Every record is locked on every try: each is sent again until its budget is spent, and
    # each retry is reported once, whichever mode decides it. Pause mode halts at the first
    # record; skip mode then retries it (releasing the pause) and the four after it.
    scenario.add_many(range(1, 6))
    scenario.sandbox.set_faults(lock_row_rate=1.0)
    for pause, records in ((True, 1), (False, 5)):
        watch = RecordRetries()
        config = scenario.config(pause_on_error=pause, record_retry_attempts=3)
        JOBS[JobId.EXPORT](config, None, watch)
        # record_retry_attempts = 3: two retries after the first try, per record the run met.
        assert watch.retried == {("contacts", "UNABLE_TO_LOCK_ROW"): 2 * records}
