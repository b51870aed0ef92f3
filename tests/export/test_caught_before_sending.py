"""Rows describe proves the org would refuse are rejected before sending, end to end over
HTTPS against the sandbox org, on SQLite and PostgreSQL state: stored under the statusCode
the org itself answers for the same value, and never sent."""

from __future__ import annotations

from typing import Any

from crm_export.ports import RunOutcome
from tests.export.export_scenario import Scenario

FIELDS = {
    "LastName": "last_name",
    "Email": "email",
    "LeadSource": "title",
    "Birthdate": "birthdate",
}
BAD: dict[int, dict[str, Any]] = {
    2: {"last_name": "L" * 81},
    3: {"title": "Carrier Pigeon"},
    4: {"birthdate": "not-a-date"},
    5: {"last_name": None},
}
CODES = {
    "2": "STRING_TOO_LONG",
    "3": "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
    "4": "JSON_PARSER_ERROR",
    "5": "REQUIRED_FIELD_MISSING",
}


def add_rows(scenario: Scenario) -> None:
    for key in range(1, 8):
        values: dict[str, Any] = {"title": "Web", **BAD.get(key, {})}
        scenario.add(key, **{"last_name": "Smith", **values})


def org_answer(scenario: Scenario, record: dict[str, Any]) -> tuple[str, str]:
    """What the org itself says of ``record``, sent straight to it (not by crm-export)."""
    sandbox = scenario.sandbox
    with sandbox.requests_session() as session:
        response = session.patch(
            f"{sandbox.base_url}/services/data/v64.0/composite/sobjects/Contact/External_Id__c",
            headers={"Authorization": f"Bearer {sandbox.access_token()}"},
            json={
                "allOrNone": False,
                "records": [{"attributes": {"type": "Contact"}, **record}],
            },
            timeout=10,
        )
    body = response.json()
    if isinstance(body, list) and "errors" in body[0]:
        return body[0]["errors"][0]["statusCode"], body[0]["errors"][0]["message"]
    return body[0]["errorCode"], body[0]["message"]  # a whole-request refusal


def test_skip_mode_rejects_what_describe_proves_before_sending(scenario: Scenario) -> None:
    add_rows(scenario)
    result = scenario.run(pause_on_error=False, fields=FIELDS)

    assert result.outcome is RunOutcome.COMPLETED
    assert (result.counts.exported, result.counts.failed) == (3, 4)
    assert {k: code for k, (code, _) in scenario.open_errors().items()} == CODES
    # The org never saw them: one call for the batch, no rejection in its log.
    assert scenario.sandbox.counters()["calls"]["composite_upsert"] == 1
    assert scenario.sandbox.rejections() == []
    assert sorted(scenario.written()) == ["1", "6", "7"]
    messages = {
        r["record_key"]: r["error_message"]
        for r in scenario.sql("SELECT record_key, error_message FROM ExportErrors")
    }
    assert all("caught by crm-export before sending" in m for m in messages.values())

    # The same code, and the same words, as the org gives for the same value: SQL on
    # error_code means the same whichever side caught it.
    probes: dict[str, dict[str, Any]] = {
        "2": {"External_Id__c": "X-2", "LastName": "L" * 81},
        "3": {"External_Id__c": "X-3", "LastName": "S", "LeadSource": "Carrier Pigeon"},
        "4": {"External_Id__c": "X-4", "LastName": "S", "Birthdate": "not-a-date"},
        "5": {"External_Id__c": "X-5", "LastName": None},
    }
    for key, record in probes.items():
        code, message = org_answer(scenario, record)
        assert code == CODES[key]
        ours = messages[key]
        common = message.split(" or request may be missing")[0]  # its parser adds a place
        assert ours.startswith(common), (ours, message)


def test_pause_mode_halts_at_a_row_caught_before_sending(scenario: Scenario) -> None:
    add_rows(scenario)
    result = scenario.run(fields=FIELDS)
    assert result.outcome is RunOutcome.PAUSED
    assert result.paused is not None and result.paused.record_key == "2"
    assert result.paused.error_code == "STRING_TOO_LONG"
    assert scenario.written() == ["1"]
    # Every later run retries it from its source row, without a call while it is refused.
    calls = scenario.sandbox.counters()["calls"]["composite_upsert"]
    assert scenario.run(fields=FIELDS).outcome is RunOutcome.PAUSED
    assert scenario.sandbox.counters()["calls"]["composite_upsert"] == calls
    assert scenario.open_errors()["2"] == ("STRING_TOO_LONG", 2)
    scenario.update(2, last_name="Fixed")
    paused = scenario.run(fields=FIELDS).paused
    assert paused is not None and paused.record_key == "3"
    assert scenario.written() == ["1", "2"]
