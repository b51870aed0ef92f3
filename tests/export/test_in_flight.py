"""Calls in flight and streams side by side, through the sandbox org over HTTPS, on SQLite and
PostgreSQL state. The order of answers is forced in tests/unit/test_in_flight.py; here the
same guarantees hold against a real server that answers concurrent calls."""

from __future__ import annotations

import json
from typing import Any

from crm_export.config import load_config
from crm_export.export import StreamProgress
from crm_export.jobs import JOBS
from crm_export.ports import JobId, RunOutcome
from crm_export.watch import Watch
from tests.export.export_scenario import Scenario

IN_FLIGHT = "max_in_flight = 4\nmax_parallel_streams = 4"


def charged(scenario: Scenario) -> int:
    """The requests the org received that count against the allocation (every attempt:
    crm-export counts the refused ones too, the safe side of a budget)."""
    calls = scenario.sandbox.counters()["calls"]
    return sum(n for endpoint, n in calls.items() if endpoint not in FREE)


FREE = {"token", "soap_login", "versions"}


def run_calls(scenario: Scenario) -> int:
    return sum(r["api_calls"] for r in scenario.sql("SELECT api_calls FROM export_runs"))


def position_key(scenario: Scenario) -> int | None:
    [state] = scenario.sql("SELECT position_key FROM stream_state WHERE stream = 'contacts'")
    key = state["position_key"]
    return None if key is None else int(json.loads(key)["value"])


def test_skip_mode_keeps_calls_in_flight_and_counts_every_call(scenario: Scenario) -> None:
    # The org refuses a fourth concurrent call (REQUEST_LIMIT_EXCEEDED, transient): a
    # refusal proves the calls overlapped, and each is retried, never lost.
    scenario.add_many(range(1, 1201))
    scenario.sandbox.set_faults(latency_ms=30, max_concurrent_requests=3)
    patient = {**scenario.settings["retry"], "max_attempts": 30, "max_elapsed_seconds": 20}
    result = scenario.run(
        pause_on_error=False, batch_size=100, export_lines=IN_FLIGHT, retry=patient
    )
    assert result.outcome is RunOutcome.COMPLETED
    counters = scenario.sandbox.counters()
    assert counters["faults"].get("concurrency_limit", 0) > 0
    assert set(scenario.contacts()) == {str(i) for i in range(1, 1201)}
    assert result.counts.exported == 1200
    # Every charged call, the refused ones too, is in export_runs: no more, no fewer.
    assert run_calls(scenario) == result.counts.api_calls == charged(scenario)
    assert position_key(scenario) == 1200


def test_pause_mode_keeps_one_call_in_flight(scenario: Scenario) -> None:
    scenario.add_many(range(1, 601))
    scenario.sandbox.set_faults(latency_ms=30, max_concurrent_requests=1)
    result = scenario.run(pause_on_error=True, batch_size=100, export_lines=IN_FLIGHT)
    assert result.outcome is RunOutcome.COMPLETED
    assert scenario.sandbox.counters()["faults"].get("concurrency_limit", 0) == 0
    assert scenario.written() == [str(i) for i in range(1, 601)]  # in order, once each
    assert run_calls(scenario) == charged(scenario)


class OutageAfterFirstBatch(Watch):
    """Once the first batch is acknowledged, the org goes down for longer than the retries
    last: the calls in flight then, and those behind them, fail or go unacknowledged."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.down = False

    def progress(self, progress: StreamProgress) -> None:
        if not progress.finished and progress.result.counts.exported and not self.down:
            self.down = True
            self.scenario.sandbox.set_faults(outage_seconds=30)


def test_a_failed_call_in_flight_holds_the_position_and_the_rest_is_resent(
    scenario: Scenario,
) -> None:
    scenario.add_many(range(1, 2001))
    scenario.sandbox.set_faults(latency_ms=20)
    fast_fail = {**scenario.settings["retry"], "max_attempts": 2, "max_elapsed_seconds": 0.5}
    config = scenario.config(
        pause_on_error=False, batch_size=100, export_lines=IN_FLIGHT, retry=fast_fail
    )
    [first] = JOBS[JobId.EXPORT](config, None, OutageAfterFirstBatch(scenario))
    assert first.outcome is RunOutcome.FAILED
    position = position_key(scenario)
    assert position is not None and position < 2000
    # Every row up to the position is in the org: the position passed no batch that was not
    # acknowledged, and what was acknowledged is what export_runs counts as exported.
    in_org = {int(k) for k in scenario.contacts()}
    assert set(range(1, position + 1)) <= in_org
    assert first.counts.exported == position
    # Calls that went out behind the failed one were counted all the same.
    assert run_calls(scenario) == charged(scenario)
    # What reached the org beyond the position is at most the window of calls in flight.
    assert len(in_org - set(range(1, position + 1))) <= 4 * 100

    scenario.sandbox.set_faults(outage_seconds=0)
    again = scenario.run(pause_on_error=False, batch_size=100, export_lines=IN_FLIGHT)
    assert again.outcome is RunOutcome.COMPLETED
    assert again.counts.exported == 2000 - position
    contacts = scenario.contacts()
    assert set(contacts) == {str(i) for i in range(1, 2001)} and len(contacts) == 2000
    assert run_calls(scenario) == charged(scenario)


def test_same_key_rows_end_with_the_latest_value(scenario: Scenario) -> None:
    # Rows updated while the run reads them: each key's newest row comes later in the order,
    # in another batch of the same page; it must never be overtaken by the older row.
    scenario.add_many(range(1, 801))
    for key in range(1, 801, 7):
        scenario.update(key, last_name=f"Newer{key}")
    scenario.sandbox.set_faults(latency_ms=20)
    result = scenario.run(pause_on_error=False, batch_size=50, export_lines=IN_FLIGHT)
    assert result.outcome is RunOutcome.COMPLETED
    contacts = scenario.contacts()
    for key in range(1, 801, 7):
        assert contacts[str(key)]["LastName"] == f"Newer{key}"


class Starts(Watch):
    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []

    def progress(self, progress: StreamProgress) -> None:
        self.events.append((progress.result.stream, progress.finished))


def test_streams_side_by_side_wait_for_their_parents(scenario: Scenario) -> None:
    """Three streams on one table: "leads" and "contacts" are independent, "late" depends
    on "contacts". It starts only after "contacts" finished."""
    scenario.add_many(range(1, 401))
    scenario.sandbox.set_faults(latency_ms=20)
    extra = """
[[streams]]
name = "{name}"
table = "contacts"
source_url = "sqlite:///{source}"
key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"
{depends}
[streams.fields]
LastName = "last_name"
"""
    source = scenario.source
    lines = extra.format(name="leads", source=source, depends="")
    lines += extra.format(name="late", source=source, depends='depends_on = ["contacts"]')
    scenario.settings["stream_lines"] = ""
    config = scenario.config(pause_on_error=False, batch_size=100, export_lines=IN_FLIGHT)
    text = config.path.read_text() + lines
    config.path.write_text(text)
    config = load_config(config.path, environ={"SF_CLIENT_SECRET": scenario.sandbox.client_secret})
    watch = Starts()
    results = JOBS[JobId.EXPORT](config, None, watch)
    assert [r.stream for r in results] == ["contacts", "leads", "late"]
    assert all(r.outcome is RunOutcome.COMPLETED for r in results)
    events = watch.events
    contacts_done = events.index(("contacts", True))
    late_start = events.index(("late", False))
    assert contacts_done < late_start
    # The independent ones overlapped: leads started before contacts finished.
    assert events.index(("leads", False)) < contacts_done
    # One run row per stream, each counting its own calls, summing to what the org counted.
    assert run_calls(scenario) == charged(scenario)
    per_stream: dict[str, Any] = {
        r["stream"]: r["api_calls"]
        for r in scenario.sql("SELECT stream, api_calls FROM export_runs")
    }
    # Four upserts each; the one describe of Contact is shared, paid by whichever asked first.
    assert sorted(per_stream.values()) in ([4, 4, 5],)
    assert sum(per_stream.values()) == 13
