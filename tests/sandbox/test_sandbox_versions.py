"""API versions: the list of served versions, the resources of one, and the answers for a
retired version (410) and one the org does not have yet (404)."""

from __future__ import annotations

import pytest
import requests
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceGeneralError,
    SalesforceResourceNotFound,
)
from simple_salesforce.login import SalesforceLogin

from crm_export.sandbox.admin_client import SandboxAdminError
from crm_export.sandbox.testing import SandboxHandle
from tests.sandbox.sandbox_helpers import Salesforce, error_body


def _sf(sandbox: SandboxHandle, session: requests.Session, version: str) -> Salesforce:
    return Salesforce(
        instance_url=sandbox.base_url,
        session_id=sandbox.access_token(),
        session=session,
        version=version,
    )


def test_the_versions_list_needs_no_login_and_costs_no_call(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    answer = session.get(f"{sandbox.base_url}/services/data/", timeout=10)
    assert answer.status_code == 200
    listed = answer.json()
    assert listed[0] == {"label": "Summer '14", "url": "/services/data/v31.0", "version": "31.0"}
    assert listed[-1] == {"label": "Spring '26", "url": "/services/data/v66.0", "version": "66.0"}
    assert {"label": "Summer '25", "url": "/services/data/v64.0", "version": "64.0"} in listed
    assert [v["version"] for v in listed] == [f"{n}.0" for n in range(31, 67)]
    # Salesforce leaves Sforce-Limit-Info off this one answer: it is no API call.
    assert "Sforce-Limit-Info" not in answer.headers
    assert sandbox.counters()["api_usage"]["used"] == 0


def test_the_resources_of_a_version(sandbox: SandboxHandle, session: requests.Session) -> None:
    sf = _sf(sandbox, session, "64.0")
    resources = sf.restful("", method="GET")
    assert resources is not None
    assert resources["sobjects"] == "/services/data/v64.0/sobjects"
    assert resources["limits"] == "/services/data/v64.0/limits"


def test_a_retired_version_is_gone(sandbox: SandboxHandle, session: requests.Session) -> None:
    sf = _sf(sandbox, session, "29.0")
    with pytest.raises(SalesforceGeneralError) as gone:
        sf.limits()
    assert gone.value.status == 410
    assert error_body(gone.value)[0]["errorCode"] == "GONE"
    assert sandbox.counters()["api_usage"]["used"] == 0


def test_a_version_the_org_does_not_have_yet_is_not_found(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    sf = _sf(sandbox, session, "67.0")
    with pytest.raises(SalesforceResourceNotFound) as missing:
        sf.limits()
    assert error_body(missing.value) == [
        {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}
    ]
    # Once the org is upgraded, the same call works.
    sandbox.set_faults(newest_api_version="67.0")
    assert "DailyApiRequests" in sf.limits()
    assert session.get(f"{sandbox.base_url}/services/data", timeout=10).json()[-1] == {
        "label": "Summer '26",
        "url": "/services/data/v67.0",
        "version": "67.0",
    }


def test_the_oldest_version_can_move_up_for_a_retirement_rehearsal(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    sandbox.set_faults(oldest_api_version="41.0")
    with pytest.raises(SalesforceGeneralError) as gone:
        _sf(sandbox, session, "40.0").limits()
    assert gone.value.status == 410
    assert "DailyApiRequests" in _sf(sandbox, session, "41.0").limits()


def test_soap_login_at_a_retired_version(sandbox: SandboxHandle) -> None:
    with sandbox.loopback_session() as session, pytest.raises(SalesforceAuthenticationFailed) as e:
        SalesforceLogin(
            username=sandbox.username,
            password=sandbox.password,
            security_token="",
            sf_version="29.0",
            session=session,
        )
    assert e.value.code == "UNSUPPORTED_API_VERSION"
    assert "below the minimum supported (31.0)" in e.value.auth_message


def test_bad_version_options_are_refused(sandbox: SandboxHandle) -> None:
    with pytest.raises(SandboxAdminError) as refused:
        sandbox.set_faults(newest_api_version="v66", oldest_api_version="70.0")
    text = str(refused.value)
    assert 'newest_api_version: an API version such as "66.0"' in text
    with pytest.raises(SandboxAdminError) as inverted:
        sandbox.set_faults(oldest_api_version="50.0", newest_api_version="45.0")
    assert "oldest_api_version: 50.0 is newer than newest_api_version 45.0" in str(inverted.value)
