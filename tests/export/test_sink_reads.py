"""The sink's reads, over real HTTPS against the sandbox org: describe (once per object per
run) and SOQL queries (every page)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_export.retry import SystemClock
from crm_export.salesforce import SalesforceSink
from crm_export.sandbox.testing import SandboxHandle
from tests.export.export_scenario import Scenario


@pytest.fixture
def scenario(tmp_path: Path, sandbox: SandboxHandle) -> Scenario:
    # Reads touch no state database: one backend is enough.
    return Scenario(tmp_path, sandbox, f"sqlite:///{tmp_path / 'state.db'}")


def sink_of(scenario: Scenario) -> SalesforceSink:
    config = scenario.config()
    return SalesforceSink(config.salesforce, config.retry, SystemClock())


def test_describe_reads_the_fields_and_asks_once_per_object(scenario: Scenario) -> None:
    sink = sink_of(scenario)
    try:
        contact = sink.describe("Contact")
        again = sink.describe("contact")  # API names are case-insensitive
        missing = sink.describe("No_Such_Object__c")
    finally:
        sink.close()
    assert contact is not None and again is contact
    last_name = contact.field("lastname")
    assert last_name is not None and last_name.name == "LastName"
    assert (last_name.type, last_name.length, last_name.required_on_create) == ("string", 80, True)
    lead_source = contact.field("LeadSource")
    assert lead_source is not None and lead_source.restricted_picklist
    assert "Web" in lead_source.picklist_values
    external = contact.field("External_Id__c")
    assert external is not None and external.external_id and external.unique
    account = contact.relationship("Account")
    assert account is not None and account.name == "AccountId"
    assert account.reference_to == ("Account",)
    value = contact.field("Lifetime_Value__c")
    assert value is not None and not value.createable and not value.updateable
    assert missing is None
    calls = scenario.sandbox.counters()["calls"]
    assert sum(n for name, n in calls.items() if "describe" in name) == 2


def test_query_reads_records_and_their_parents(scenario: Scenario) -> None:
    scenario.sandbox.insert_records("Account", [{"Name": "Acme", "External_Id__c": "A-1"}])
    [account] = scenario.sandbox.records("Account")
    scenario.sandbox.insert_records(
        "Contact",
        [
            {"LastName": "O'Hara", "External_Id__c": "C-1", "AccountId": account["Id"]},
            {"LastName": "Smith", "External_Id__c": "C-2"},
            {"LastName": "Other", "External_Id__c": "C-3"},
        ],
    )
    sink = sink_of(scenario)
    try:
        records = sink.query(
            "SELECT External_Id__c, LastName, Account.External_Id__c FROM Contact "
            "WHERE External_Id__c IN ('c-1', 'C-2', 'C-9')"
        )
    finally:
        sink.close()
    by_id = {r["External_Id__c"]: r for r in records}
    assert sorted(by_id) == ["C-1", "C-2"]  # IN compares text without case, as SOQL does
    assert by_id["C-1"]["LastName"] == "O'Hara"
    assert by_id["C-1"]["Account"]["External_Id__c"] == "A-1"
    assert by_id["C-2"]["Account"] is None
