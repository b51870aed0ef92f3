"""The API budget governor end to end, against the sandbox org's daily_api_limit fault and its
own usage counter, on SQLite and PostgreSQL state."""

from __future__ import annotations

import subprocess
import sys

from structlog.testing import capture_logs

from crm_export.ports import RunOutcome
from tests.export.export_scenario import Scenario


def org_usage(scenario: Scenario) -> int:
    return int(scenario.sandbox.counters()["api_usage"]["used"])


def other_integrations_spend(scenario: Scenario, calls: int) -> None:
    """Calls the org's other integrations make: they count against the same allocation."""
    token = scenario.sandbox.access_token()
    with scenario.sandbox.requests_session() as session:
        for _ in range(calls):
            session.get(
                f"{scenario.sandbox.base_url}/services/data/v64.0/limits/",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).raise_for_status()


def test_the_run_stops_at_the_line_and_resumes_below_it(scenario: Scenario) -> None:
    scenario.add_many(range(1, 5001))  # 25 batches of 200
    scenario.sandbox.set_faults(daily_api_limit=100)
    budget = {"salesforce_lines": "max_api_usage_percent = 50"}  # the line: 50 calls
    other_integrations_spend(scenario, 40)

    with capture_logs() as logs:
        first = scenario.run(**budget)

    assert first.outcome is RunOutcome.DEFERRED and first.error is None
    assert first.deferred is not None and "50 of its 100 daily calls" in first.deferred
    # Calls 41..50 (the describe of Contact, then nine upserts): the answer to the 10th said
    # 50, the line. Nothing past it.
    assert org_usage(scenario) == 50
    assert first.counts.exported == 1800 and first.counts.api_calls == 10
    [event] = [e for e in logs if e["event"] == "api_budget_reached"]
    assert (event["used"], event["limit"], event["line"]) == (50, 100, 50)
    assert scenario.export_errors() == []
    [run] = scenario.sql(
        "SELECT outcome, error, records_exported, api_calls, logins, org_api_used, org_api_max "
        "FROM export_runs"
    )
    assert run == {
        "outcome": "deferred",
        "error": None,
        "records_exported": 1800,
        "api_calls": 10,
        "logins": 1,
        "org_api_used": 50,
        "org_api_max": 100,
    }
    assert len(scenario.contacts()) == 1800

    # The next run (as the daemon would start it) asks /limits once, still finds usage at the
    # line, and sends nothing: it exits 0, for nothing is wrong.
    env = {"SF_CLIENT_SECRET": scenario.sandbox.client_secret}
    config = scenario.config(**budget).path
    done = subprocess.run(
        [sys.executable, "-m", "crm_export", "job", "CRMExport", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "CRMExport contacts: deferred - read 0" in done.stdout
    assert "API calls 1, logins 1; deferred: the org's API usage is 51" in done.stdout
    calls = scenario.sandbox.counters()["calls"]
    assert (calls["limits"], calls["composite_upsert"]) == (41, 9)  # 40 others' + 1 ours

    # The allocation grows (in a real org: the rolling 24 hours free calls): the next run
    # asks /limits once more and exports the rest, each record once.
    scenario.sandbox.set_faults(daily_api_limit=1000)
    resumed = scenario.run(**budget)
    assert resumed.outcome is RunOutcome.COMPLETED
    # /limits, the describe, then 16 upserts.
    assert resumed.counts.exported == 3200 and resumed.counts.api_calls == 1 + 1 + 16
    assert sorted(map(int, scenario.contacts())) == list(range(1, 5001))
    assert len(scenario.written()) == 5000


def test_with_no_line_the_org_s_own_refusal_defers(scenario: Scenario) -> None:
    scenario.add_many(range(1, 1001))
    scenario.sandbox.set_faults(daily_api_limit=3)
    result = scenario.run(salesforce_lines="max_api_usage_percent = 100")
    # 3 calls served (the describe and two upserts), the 4th refused with 403 TotalRequests:
    # deferred at once, no retry.
    assert result.outcome is RunOutcome.DEFERRED
    assert "allocation is spent" in (result.deferred or "")
    assert result.counts.exported == 400 and result.counts.api_calls == 4
    assert scenario.sandbox.counters()["faults"]["daily_api_limit"] == 1
    assert scenario.export_errors() == []
