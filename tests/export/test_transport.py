"""crm-export over a real org's transport: kept-alive connections that a load balancer drops
while idle cost no failed call, and a server's Retry-After is honoured."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from crm_export.ports import RunOutcome
from crm_export.wiring import open_runtime
from tests.export.export_scenario import Scenario


def _handshakes(scenario: Scenario) -> int:
    return int(scenario.sandbox.counters()["transport"]["tls_handshakes"])


def test_a_connection_dropped_while_idle_costs_no_failed_call(scenario: Scenario) -> None:
    scenario.sandbox.set_faults(idle_timeout_seconds=0.5)
    scenario.add_many(range(1, 1001))
    before = _handshakes(scenario)
    with capture_logs() as logs, open_runtime(scenario.config()) as runtime:
        [plan] = runtime.plans
        first = runtime.exporter.export_stream(plan)
        # Longer than the org's edge keeps an idle connection: the next call goes out on a
        # pooled connection that the sandbox has forgotten, and meets a reset.
        time.sleep(1.0)
        scenario.add_many(range(1001, 1101))
        second = runtime.exporter.export_stream(plan)
    # The counters call opens a connection of its own.
    exporter_handshakes = _handshakes(scenario) - before - 1

    assert (first.outcome, first.counts.exported) == (RunOutcome.COMPLETED, 1000)
    assert (second.outcome, second.counts.exported) == (RunOutcome.COMPLETED, 100)
    assert [e for e in logs if e["event"] == "salesforce_retry"] == []
    counters = scenario.sandbox.counters()
    assert counters["transport"]["idle_resets"] == 1
    assert counters["calls"]["composite_upsert"] == 6  # 5 batches of 200, then 1: none twice
    # Every call of the first export on one connection, one more after the idle drop.
    assert exporter_handshakes == 2
    assert scenario.export_errors() == []
    assert len(scenario.contacts()) == 1100


def test_the_wait_after_a_503_honours_retry_after(scenario: Scenario) -> None:
    scenario.add_many(range(1, 51))
    # Without Retry-After, this scenario's backoff (10-50 ms) would spend its 6 attempts in
    # a fraction of the outage and fail the run.
    scenario.sandbox.set_faults(retry_after_seconds=1, outage_seconds=1.5)
    started = time.monotonic()
    with capture_logs() as logs:
        result = scenario.run()
    elapsed = time.monotonic() - started

    assert (result.outcome, result.counts.exported) == (RunOutcome.COMPLETED, 50)
    waits = [e["wait_seconds"] for e in logs if e["event"] == "salesforce_retry"]
    assert waits and all(wait >= 1.0 for wait in waits)
    assert elapsed >= 1.5
    # One refused login a second, not one every few milliseconds.
    assert scenario.sandbox.counters()["faults"]["outage"] <= 4
    assert scenario.export_errors() == []
