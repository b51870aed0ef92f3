"""The admin API (/_sandbox) and storage: counters, logs, org changes, reset, --data."""

from __future__ import annotations

from pathlib import Path

from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.sandbox_helpers import VERSION, Salesforce, contact, upsert_contacts


def test_counters_count_calls_faults_and_records(sandbox: SandboxHandle, sf: Salesforce) -> None:
    upsert_contacts(sf, [contact("C-1", LastName="A"), contact("C-2")])
    upsert_contacts(sf, [contact("C-1", LastName="B")])
    sf.Contact.upsert("External_Id__c/C-3", {"LastName": "C"})
    sf.query("SELECT Id FROM Contact")
    counters = sandbox.counters()
    assert counters["calls"] == {
        "composite_upsert": 2,
        "query": 1,
        "single_upsert": 1,
        "token": 1,
    }
    assert counters["api_usage"] == {"used": 4, "max": 5_000_000}
    assert counters["records"] == {"created": 2, "updated": 1, "deleted": 0, "failed": 1}
    assert counters["by_sobject"]["Contact"] == {"created": 2, "updated": 1, "failed": 1}


def test_write_log_and_rejections(sandbox: SandboxHandle, sf: Salesforce) -> None:
    upsert_contacts(sf, [contact("C-1", LastName="A"), contact("C-2", Email="bad")])
    sf.Contact.upsert("External_Id__c/C-1", {"Title": "x"})
    writes = sandbox.writes()
    assert [(w["external_id"], w["action"], w["endpoint"]) for w in writes] == [
        ("C-1", "created", "composite_upsert"),
        ("C-1", "updated", "single_upsert"),
    ]
    assert writes[0]["id"] == writes[1]["id"] and writes[0]["sobject"] == "Contact"
    assert writes[0]["seq"] < writes[1]["seq"] and writes[0]["time"]
    [rejected] = sandbox.rejections()
    assert rejected["external_id"] == "C-2"
    assert rejected["errors"][0]["statusCode"] == "INVALID_EMAIL_ADDRESS"
    assert rejected["record"]["Email"] == "bad"
    assert sandbox.writes(since=writes[0]["seq"]) == writes[1:]


def test_reset_forgets_records_and_counters_but_keeps_faults(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    upsert_contacts(sf, [contact("C-1", LastName="A")])
    sandbox.set_faults(latency_ms=1)
    sandbox.reset()
    assert sandbox.records("Contact") == []
    assert sandbox.writes() == []
    assert sandbox.counters()["calls"] == {}
    assert sandbox.faults()["latency_ms"] == 1
    # The token is still good and new ids start over.
    assert upsert_contacts(sf, [contact("C-9", LastName="Z")])[0]["id"] == "003Sb0000000001IAA"


def test_replace_the_org_at_run_time(sandbox: SandboxHandle, sf: Salesforce) -> None:
    org = sandbox.org()
    org["objects"]["Contact"]["fields"]["Title"]["length"] = 5
    sandbox.set_org(org)
    results = upsert_contacts(sf, [contact("C-1", LastName="A", Title="Too long")])
    assert results[0]["errors"][0]["statusCode"] == "STRING_TOO_LONG"


def test_faults_get_put_delete(sandbox: SandboxHandle) -> None:
    assert sandbox.set_faults({"http_error_rate": {"503": 0.1}})["http_error_rate"] == {"503": 0.1}
    merged = sandbox.set_faults(http_error_rate={"500": 0.2}, latency_ms=5)
    assert merged["http_error_rate"] == {"503": 0.1, "500": 0.2}
    assert sandbox.set_faults(latency_ms=None)["latency_ms"] == 0
    cleared = sandbox.clear_faults()
    assert cleared["http_error_rate"] == {} and cleared["seed"] == 0


def test_records_survive_a_restart_with_a_data_file(tmp_path: Path) -> None:
    data = tmp_path / "org.sqlite"
    with running_sandbox(data=data) as sandbox, sandbox.requests_session() as session:
        sf = Salesforce(
            instance_url=sandbox.base_url,
            session_id=sandbox.access_token(),
            session=session,
            version=VERSION,
        )
        first = upsert_contacts(sf, [contact("C-1", LastName="A")])
        # A rolled-back allOrNone call must leave no trace in the file either.
        upsert_contacts(sf, [contact("C-2", LastName="B"), contact("C-3")], all_or_none=True)
    with running_sandbox(data=data) as sandbox, sandbox.requests_session() as session:
        assert [r["External_Id__c"] for r in sandbox.records("Contact")] == ["C-1"]
        sf = Salesforce(
            instance_url=sandbox.base_url,
            session_id=sandbox.access_token(),
            session=session,
            version=VERSION,
        )
        again = upsert_contacts(sf, [contact("C-1", Title="Back"), contact("C-4", LastName="D")])
        assert again[0] == {"id": first[0]["id"], "success": True, "errors": [], "created": False}
        # Ids keep counting from where the last run stopped.
        assert again[1]["id"] != first[0]["id"]


def test_seeded_records_bypass_rules(sandbox: SandboxHandle) -> None:
    [record_id] = sandbox.insert_records("Contact", [{"LastName": "TriggerFail", "Email": "x"}])
    assert record_id.startswith("003")
    assert sandbox.records("Contact")[0]["Email"] == "x"
