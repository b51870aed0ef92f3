"""`crm-export verify` end to end over HTTPS against the sandbox org, on SQLite and
PostgreSQL state: records edited, deleted and written behind crm-export's back are each
reported, and what Salesforce stores differently from what it was sent is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.export.export_scenario import Scenario

FIELDS = {"FirstName": "first_name", "LastName": "last_name", "Email": "email", "Title": "title"}


def cli(scenario: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    scenario.config(fields=FIELDS)  # writes crm-export.toml
    config = str(scenario.dir / "crm-export.toml")
    return subprocess.run(
        [sys.executable, "-m", "crm_export", *args, "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SF_CLIENT_SECRET": scenario.sandbox.client_secret},
    )


def verify(scenario: Scenario, *args: str) -> tuple[int, Any]:
    done = cli(scenario, "verify", "contacts", *args)
    assert "Traceback" not in done.stderr, done.stderr
    if "--json" in args:
        return done.returncode, json.loads(done.stdout)
    return done.returncode, done.stdout


def delete_in_org(scenario: Scenario, record_id: str) -> None:
    sandbox = scenario.sandbox
    with sandbox.requests_session() as session:
        response = session.delete(
            f"{sandbox.base_url}/services/data/v64.0/composite/sobjects",
            params={"ids": record_id, "allOrNone": "false"},
            headers={"Authorization": f"Bearer {sandbox.access_token()}"},
            timeout=10,
        )
    assert response.status_code == 200 and response.json()[0]["success"], response.text


def test_verify_reports_what_was_changed_behind_crm_export_s_back(scenario: Scenario) -> None:
    for key in range(1, 7):
        scenario.add(key, title="Engineer")
    # Salesforce trims text, and stores "" as nothing: no difference for either.
    scenario.update(4, title="  VP Sales  ", first_name="")
    assert scenario.run(fields=FIELDS).counts.exported == 6

    code, clean = verify(scenario, "--all", "--json")
    assert code == 0, clean
    assert (clean["ok"], clean["checked"], clean["matched"]) == (True, 6, 6)

    contacts = scenario.contacts()
    # Someone edits record 2 in Salesforce, and deletes record 3.
    edited = {**contacts["2"], "Title": "Chief Engineer"}
    scenario.sandbox.insert_records("Contact", [edited])
    delete_in_org(scenario, contacts["3"]["Id"])
    # A new source row, not exported yet, that someone already wrote into Salesforce as it
    # is; and another new row that is not there: only pending.
    scenario.add(7, title="Intern")
    scenario.add(8, title="Intern")
    scenario.sandbox.insert_records(
        "Contact",
        [
            {
                "External_Id__c": "7",
                "FirstName": "F7",
                "LastName": "Smith",
                "Email": "c7@acme.test",
                "Title": "Intern",
            }
        ],
    )

    code, report = verify(scenario, "--all", "--json")
    assert code == 1
    assert report["ok"] is False and report["checked"] == 8
    assert report["missing"] == ["3"]
    [differs] = report["differs"]
    assert differs["record_key"] == "2" and differs["id"] == contacts["2"]["Id"]
    assert differs["fields"] == [
        {"field": "Title", "expected": "Engineer", "actual": "Chief Engineer"}
    ]
    assert report["unacknowledged"] == ["7"]
    assert report["pending"] == ["8"]
    assert report["matched"] == 4  # 1, 4, 5, 6

    code, text = verify(scenario, "--all")
    assert code == 1
    assert "missing in Salesforce, though exported: 3" in text
    assert f"differs: 2 ({contacts['2']['Id']}): Title: sent 'Engineer', Salesforce has " in text
    assert "never acknowledged: 7" in text

    code, sample = verify(scenario, "--sample", "3", "--json")
    assert sample["checked"] == 3 and sample["sample"] == 3

    # The next run sends 7 and 8: nothing is pending or unacknowledged any more.
    scenario.run(fields=FIELDS)
    _, after = verify(scenario, "--all", "--json")
    assert (after["unacknowledged"], after["pending"]) == ([], [])
    # Batched reads: every record asked for in SOQL, not one call per record.
    queries = scenario.sandbox.counters()["calls"].get("query", 0)
    assert 0 < queries <= 6


def test_an_unknown_stream_exits_2(scenario: Scenario) -> None:
    done = cli(scenario, "verify", "nosuch")
    assert done.returncode == 2 and "no stream named 'nosuch'" in done.stderr
