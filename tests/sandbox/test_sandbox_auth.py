"""Logging in: the OAuth grants, SOAP login, and the session check on data endpoints."""

from __future__ import annotations

import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceExpiredSession
from simple_salesforce.login import SalesforceLogin

from crm_export.sandbox.testing import SandboxHandle
from tests.sandbox.sandbox_helpers import VERSION, Salesforce, error_body


def token_url(sandbox: SandboxHandle) -> str:
    return f"{sandbox.base_url}/services/oauth2/token"


def rsa_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_client_credentials_with_basic_auth_returns_a_token_for_the_sandbox(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    response = session.post(
        token_url(sandbox),
        data={"grant_type": "client_credentials"},
        auth=("crm-export-sandbox", "sandbox-secret"),
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "access_token",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
        "signature",
    }
    assert body["instance_url"] == sandbox.base_url
    assert body["token_type"] == "Bearer"
    assert response.headers["Sforce-Limit-Info"].startswith("api-usage=")


def test_client_credentials_in_the_form_works_and_a_bad_secret_is_invalid_client(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    good = session.post(
        token_url(sandbox),
        data={
            "grant_type": "client_credentials",
            "client_id": "crm-export-sandbox",
            "client_secret": "sandbox-secret",
        },
    )
    assert good.status_code == 200
    bad = session.post(
        token_url(sandbox),
        data={"grant_type": "client_credentials"},
        auth=("crm-export-sandbox", "wrong"),
    )
    assert bad.status_code == 400
    assert bad.json() == {
        "error": "invalid_client",
        "error_description": "invalid client credentials",
    }


def test_password_grant_checks_the_user_password(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    form = {
        "grant_type": "password",
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "username": sandbox.username,
    }
    ok = session.post(token_url(sandbox), data={**form, "password": sandbox.password})
    assert ok.status_code == 200
    wrong = session.post(token_url(sandbox), data={**form, "password": "nope"})
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_grant", "error_description": "authentication failure"}


def test_unsupported_grant_type(sandbox: SandboxHandle, session: requests.Session) -> None:
    response = session.post(token_url(sandbox), data={"grant_type": "authorization_code"})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_jwt_bearer_is_verified_against_the_clients_configured_key(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    private, public = rsa_key()
    other_private, _ = rsa_key()
    sandbox.set_org(patch={"clients": {"crm-export-sandbox": {"jwt_public_key": public}}})
    claims = {
        "iss": sandbox.client_id,
        "sub": sandbox.username,
        "aud": "https://login.salesforce.com",
        "exp": int(time.time()) + 180,
    }

    def post(assertion: str) -> requests.Response:
        return session.post(
            token_url(sandbox),
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion,
            },
        )

    assert post(jwt.encode(claims, private, algorithm="RS256")).status_code == 200
    forged = post(jwt.encode(claims, other_private, algorithm="RS256"))
    assert forged.status_code == 400
    assert forged.json() == {"error": "invalid_grant", "error_description": "invalid assertion"}
    expired = post(jwt.encode({**claims, "exp": int(time.time()) - 10}, private, algorithm="RS256"))
    assert expired.status_code == 400
    assert expired.json()["error"] == "invalid_grant"
    unknown_client = post(jwt.encode({**claims, "iss": "someone-else"}, private, algorithm="RS256"))
    assert unknown_client.json()["error"] == "invalid_client"
    unknown_user = post(jwt.encode({**claims, "sub": "nobody@x"}, private, algorithm="RS256"))
    assert unknown_user.json() == {
        "error": "invalid_grant",
        "error_description": "authentication failure",
    }


def test_simple_salesforce_jwt_login_through_the_loopback_session(sandbox: SandboxHandle) -> None:
    private, public = rsa_key()
    sandbox.set_org(patch={"clients": {"crm-export-sandbox": {"jwt_public_key": public}}})
    with sandbox.loopback_session() as loopback:
        sf = Salesforce(
            username=sandbox.username,
            consumer_key=sandbox.client_id,
            privatekey=private,
            session=loopback,
            version=VERSION,
        )
        assert sf.sf_instance == f"127.0.0.1:{sandbox.port}"
        assert sf.limits()["DailyApiRequests"]["Max"] > 0


def test_simple_salesforce_password_and_client_credentials_logins(sandbox: SandboxHandle) -> None:
    with sandbox.loopback_session() as loopback:
        by_password = Salesforce(
            username=sandbox.username,
            password=sandbox.password,
            consumer_key=sandbox.client_id,
            consumer_secret=sandbox.client_secret,
            session=loopback,
            version=VERSION,
        )
        assert by_password.query("SELECT Id FROM Contact")["totalSize"] == 0
        by_client = Salesforce(
            consumer_key=sandbox.client_id,
            consumer_secret=sandbox.client_secret,
            domain="sandbox.my",
            session=loopback,
            version=VERSION,
        )
        assert by_client.query("SELECT Id FROM Account")["done"] is True
        with pytest.raises(SalesforceAuthenticationFailed) as failed:
            Salesforce(
                username=sandbox.username,
                password="wrong",
                consumer_key=sandbox.client_id,
                consumer_secret=sandbox.client_secret,
                session=loopback,
                version=VERSION,
            )
        assert failed.value.code == "invalid_grant"
    assert sandbox.counters()["calls"]["token"] == 3


def test_soap_login_gives_a_working_session_and_a_login_fault_on_bad_password(
    sandbox: SandboxHandle,
) -> None:
    with sandbox.loopback_session() as loopback:
        session_id, instance = SalesforceLogin(
            username=sandbox.username,
            password=sandbox.password,
            security_token="",
            session=loopback,
            sf_version=VERSION,
        )
        assert instance == f"127.0.0.1:{sandbox.port}"
        sf = Salesforce(session_id=session_id, instance=instance, session=loopback, version=VERSION)
        assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0
        with pytest.raises(SalesforceAuthenticationFailed) as failed:
            SalesforceLogin(
                username=sandbox.username,
                password="wrong",
                security_token="",
                session=loopback,
                sf_version=VERSION,
            )
    assert failed.value.code == "INVALID_LOGIN"
    assert "Invalid username, password, security token" in failed.value.auth_message


def test_data_endpoints_refuse_an_unknown_token(
    sandbox: SandboxHandle, session: requests.Session
) -> None:
    sf = Salesforce(
        instance_url=sandbox.base_url, session_id="00D!made-up", session=session, version=VERSION
    )
    with pytest.raises(SalesforceExpiredSession) as expired:
        sf.limits()
    assert expired.value.status == 401
    assert error_body(expired.value) == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    missing = session.get(f"{sandbox.base_url}/services/data/v{VERSION}/limits/")
    assert missing.status_code == 401
