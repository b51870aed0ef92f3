"""Every fault option: the response a client sees and the exception simple-salesforce raises."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
)

from crm_export.sandbox.admin_client import SandboxAdminError
from crm_export.sandbox.faults import FaultsError
from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.sandbox_helpers import VERSION, Salesforce, contact, error_body, upsert_contacts


def test_latency_delays_each_call(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sandbox.set_faults(latency_ms=150)
    started = time.monotonic()
    sf.limits()
    assert time.monotonic() - started >= 0.15
    assert sandbox.counters()["faults"]["latency"] == 1


def test_http_500_is_unknown_exception_json(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sandbox.set_faults(http_error_rate={"500": 1.0})
    with pytest.raises(SalesforceGeneralError) as failed:
        upsert_contacts(sf, [contact("C-1", LastName="A")])
    assert failed.value.status == 500
    assert error_body(failed.value)[0]["errorCode"] == "UNKNOWN_EXCEPTION"
    assert sandbox.records("Contact") == []  # nothing was written


@pytest.mark.parametrize("status", [502, 503])
def test_gateway_and_maintenance_errors_are_html(
    sandbox: SandboxHandle, sf: Salesforce, status: int
) -> None:
    sandbox.set_faults(http_error_rate={str(status): 1.0})
    with pytest.raises(SalesforceGeneralError) as failed:
        sf.limits()
    assert failed.value.status == status
    assert isinstance(failed.value.content, str) and "<html>" in failed.value.content
    assert sandbox.counters()["faults"][f"http_{status}"] == 1


def test_reset_mid_response_after_the_write_happened(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    sandbox.set_faults(reset_rate=1.0)
    with pytest.raises(requests.exceptions.RequestException) as broken:
        upsert_contacts(sf, [contact("C-1", LastName="A")])
    assert isinstance(
        broken.value,
        requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError,
    )
    # Like a real network drop after commit: the record exists, the client never heard.
    assert [r["External_Id__c"] for r in sandbox.records("Contact")] == ["C-1"]
    sandbox.clear_faults()
    assert upsert_contacts(sf, [contact("C-1", LastName="A")])[0]["created"] is False


def test_outage_window_then_recovery(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sandbox.set_faults(outage_seconds=0.3)
    with pytest.raises(SalesforceGeneralError) as down:
        sf.limits()
    assert down.value.status == 503
    with sandbox.requests_session() as session:
        token = session.post(
            f"{sandbox.base_url}/services/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(sandbox.client_id, sandbox.client_secret),
        )
    assert token.status_code == 503
    assert sandbox.faults()["outage_remaining_seconds"] > 0
    time.sleep(0.35)
    assert sf.limits()["DailyApiRequests"]["Max"] > 0


def test_token_endpoint_gets_5xx_faults_in_the_oauth_shape(sandbox: SandboxHandle) -> None:
    sandbox.set_faults(http_error_rate={"500": 1.0}, lock_row_rate=1.0)
    with sandbox.requests_session() as session:
        response = session.post(
            f"{sandbox.base_url}/services/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(sandbox.client_id, sandbox.client_secret),
        )
    assert response.status_code == 500
    assert response.json() == {"error": "unknown_error", "error_description": "retry your request"}


def test_lock_row_fails_records_in_every_write_endpoint(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    sf.Contact.upsert("External_Id__c/C-1", {"LastName": "Existing"})
    existing_id = sandbox.records("Contact")[0]["Id"]
    sandbox.set_faults(lock_row_rate=1.0)

    results = upsert_contacts(sf, [contact("C-1", LastName="B")])
    assert results == [
        {
            "success": False,
            "errors": [
                {
                    "statusCode": "UNABLE_TO_LOCK_ROW",
                    "message": "unable to obtain exclusive access to this record or 1 records: "
                    + existing_id,
                    "fields": [],
                }
            ],
        }
    ]
    with pytest.raises(SalesforceMalformedRequest) as single:
        sf.Contact.upsert("External_Id__c/C-1", {"LastName": "B"})
    assert error_body(single.value)[0]["errorCode"] == "UNABLE_TO_LOCK_ROW"
    [bulk] = sf.bulk2.Contact.upsert(
        records=[{"External_Id__c": "C-2", "LastName": "New"}],
        external_id_field="External_Id__c",
        wait=0,
    )
    assert bulk["numberRecordsFailed"] == 1
    assert [r["LastName"] for r in sandbox.records("Contact")] == ["Existing"]
    assert sandbox.counters()["faults"]["lock_row"] == 3


def test_usage_runs_slightly_past_the_allocation_before_calls_are_refused(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    sandbox.set_faults(daily_api_limit=20)  # the default overrun: 10 %
    for _ in range(22):
        sf.limits()
    assert sf.api_usage["api-usage"].used == 22 and sf.api_usage["api-usage"].total == 20
    with pytest.raises(SalesforceRefusedRequest):
        sf.limits()
    counters = sandbox.counters()
    assert counters["api_usage"] == {"used": 22, "max": 20}
    assert counters["faults"]["daily_api_limit"] == 1


def test_limits_say_nothing_remains_while_usage_is_over(
    sandbox: SandboxHandle, sf: Salesforce
) -> None:
    sandbox.set_faults(daily_api_limit=2, daily_api_overrun=1.0)
    sf.limits()
    assert sf.limits()["DailyApiRequests"] == {"Max": 2, "Remaining": 0}
    assert sf.limits()["DailyApiRequests"] == {"Max": 2, "Remaining": 0}
    assert sandbox.counters()["api_usage"] == {"used": 3, "max": 2}


def test_api_bursts_in_the_limit_header(sandbox: SandboxHandle, session: requests.Session) -> None:
    sandbox.set_faults(daily_api_limit=2, daily_api_overrun=0.5, api_bursts=750)
    headers = {"Authorization": f"Bearer {sandbox.access_token()}"}
    url = f"{sandbox.base_url}/services/data/v{VERSION}/limits"
    seen = [session.get(url, headers=headers).headers["Sforce-Limit-Info"] for _ in range(3)]
    assert seen == [
        "api-usage=1/2; api-bursts=0/750",
        "api-usage=2/2; api-bursts=0/750",
        "api-usage=3/2; api-bursts=1/750",
    ]
    # simple-salesforce still reads the usage out of the longer header.
    assert Salesforce.parse_api_usage(seen[-1])["api-usage"] == (3, 2)


def test_daily_api_limit(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sandbox.set_faults(daily_api_limit=3, daily_api_overrun=0)
    assert sf.limits()["DailyApiRequests"] == {"Max": 3, "Remaining": 2}
    sf.limits()
    sf.limits()
    assert sf.api_usage["api-usage"].used == 3 and sf.api_usage["api-usage"].total == 3
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.limits()
    assert refused.value.status == 403
    assert error_body(refused.value) == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]


def test_max_concurrent_requests(sandbox: SandboxHandle) -> None:
    sandbox.set_faults(max_concurrent_requests=1, latency_ms=300)
    token = sandbox.access_token()
    outcomes: list[Any] = []

    def call() -> None:
        with sandbox.requests_session() as session:
            sf = Salesforce(
                instance_url=sandbox.base_url, session_id=token, session=session, version=VERSION
            )
            try:
                outcomes.append(sf.limits())
            except SalesforceRefusedRequest as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [o for o in outcomes if isinstance(o, SalesforceRefusedRequest)]
    assert 1 <= len(refused) <= 2
    assert error_body(refused[0])[0]["message"] == "ConcurrentPerOrgLongTxn Limit exceeded."


def test_request_limit_rate_bursts(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sandbox.set_faults(request_limit_rate=1.0)
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.limits()
    assert error_body(refused.value)[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


def test_token_ttl_calls_then_a_new_token_works(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sandbox.set_faults(token_ttl_calls=2)
    sf.limits()
    sf.limits()
    with pytest.raises(SalesforceExpiredSession) as expired:
        sf.limits()
    assert error_body(expired.value)[0]["errorCode"] == "INVALID_SESSION_ID"
    with pytest.raises(SalesforceExpiredSession):
        sf.limits()  # stays expired until a new token is fetched
    sf.session_id = sandbox.access_token()
    sf.headers["Authorization"] = f"Bearer {sf.session_id}"
    assert sf.limits()["DailyApiRequests"]["Max"] > 0
    assert sandbox.counters()["faults"]["token_expired"] == 1


def test_token_ttl_seconds(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sandbox.set_faults(token_ttl_seconds=0.2)
    sf.limits()
    time.sleep(0.25)
    with pytest.raises(SalesforceExpiredSession):
        sf.limits()


def test_simple_salesforce_logs_in_again_after_token_expiry(sandbox: SandboxHandle) -> None:
    sandbox.set_faults(token_ttl_calls=2)
    with sandbox.loopback_session() as loopback:
        sf = Salesforce(
            username=sandbox.username,
            password=sandbox.password,
            consumer_key=sandbox.client_id,
            consumer_secret=sandbox.client_secret,
            session=loopback,
            version=VERSION,
        )
        for _ in range(5):
            sf.query("SELECT Id FROM Contact")
    assert sandbox.counters()["calls"]["token"] == 3


def test_paths_limit_faults_to_matching_endpoints(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sandbox.set_faults(http_error_rate={"503": 1.0}, paths="/composite/")
    assert sf.limits()["DailyApiRequests"]["Max"] > 0
    with pytest.raises(SalesforceGeneralError):
        upsert_contacts(sf, [contact("C-1", LastName="A")])


def outcome_pattern(seed: int) -> list[str]:
    faults = {"http_error_rate": {"503": 0.3}, "lock_row_rate": 0.3}
    pattern = []
    with running_sandbox(seed=seed) as sandbox, sandbox.requests_session() as s:
        sf = Salesforce(
            instance_url=sandbox.base_url,
            session_id=sandbox.access_token(),
            session=s,
            version=VERSION,
        )
        sandbox.set_faults(faults)
        for i in range(20):
            try:
                results = upsert_contacts(
                    sf, [contact(f"C-{i}", LastName="A"), contact(f"D-{i}", LastName="B")]
                )
                pattern.append("".join("ok" if r["success"] else "LOCK" for r in results))
            except SalesforceGeneralError:
                pattern.append("503")
    return pattern


def test_faults_are_deterministic_under_a_seed() -> None:
    first = outcome_pattern(seed=7)
    assert first == outcome_pattern(seed=7)
    assert "503" in first and any("LOCK" in p for p in first)
    assert first != outcome_pattern(seed=8)


def test_reset_replays_the_fault_draws(sandbox: SandboxHandle, sf: Salesforce) -> None:
    sandbox.set_faults(lock_row_rate=0.5)

    def pattern() -> list[bool]:
        return [
            r["success"]
            for r in upsert_contacts(sf, [contact(f"C-{i}", LastName="A") for i in range(10)])
        ]

    first = pattern()
    sandbox.reset()
    assert pattern() == first


def test_invalid_fault_options_are_refused(sandbox: SandboxHandle) -> None:
    with pytest.raises(SandboxAdminError) as refused:
        sandbox.set_faults(reset_rate=2, http_error_rate={"418": 0.1})
    assert refused.value.status == 400
    assert "reset_rate" in str(refused.value) and "http_error_rate.418" in str(refused.value)
    assert sandbox.faults()["reset_rate"] == 0
    with pytest.raises(FaultsError), running_sandbox(faults={"lock_rate": 0.1}):
        pass


def test_retry_after_on_429_and_503(sandbox: SandboxHandle, session: requests.Session) -> None:
    sandbox.set_faults(retry_after_seconds=7)
    headers = {"Authorization": f"Bearer {sandbox.access_token()}"}
    url = f"{sandbox.base_url}/services/data/v{VERSION}/limits"
    for status, expected in (("503", "7"), ("429", "7"), ("500", None), ("502", None)):
        sandbox.set_faults(http_error_rate=None)
        sandbox.set_faults(http_error_rate={status: 1.0})
        answer = session.get(url, headers=headers)
        assert answer.status_code == int(status)
        assert answer.headers.get("Retry-After") == expected
    sandbox.set_faults(http_error_rate=None, outage_seconds=5)
    outage = session.get(url, headers=headers)
    assert (outage.status_code, outage.headers.get("Retry-After")) == (503, "7")
