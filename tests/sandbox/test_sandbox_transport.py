"""Connections: kept alive (HTTP/1.1), every answer framed by its length, idle ones dropped as a
load balancer drops them, and all of it counted in the admin counters."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator

import pytest
import requests

from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.sandbox_helpers import VERSION

DATA = f"/services/data/v{VERSION}"


@pytest.fixture
def connection(sandbox: SandboxHandle) -> Iterator[http.client.HTTPSConnection]:
    """One raw HTTPS connection, so a test sees exactly what goes over it."""
    context = ssl.create_default_context(cafile=sandbox.ca_path)
    conn = http.client.HTTPSConnection("127.0.0.1", sandbox.port, context=context, timeout=10)
    yield conn
    conn.close()


def _call(
    conn: http.client.HTTPSConnection,
    method: str,
    path: str,
    body: object = None,
    token: str | None = None,
) -> http.client.HTTPResponse:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    response.read()
    return response


def _transport(sandbox: SandboxHandle) -> dict[str, int]:
    counts: dict[str, int] = sandbox.counters()["transport"]
    return counts


def test_one_connection_serves_many_requests_and_every_answer_has_its_length(
    sandbox: SandboxHandle, connection: http.client.HTTPSConnection
) -> None:
    token = sandbox.access_token()
    before = _transport(sandbox)
    answers = [
        _call(connection, "GET", f"{DATA}/limits", token=token),
        # An error the server answers before reading the body: the body must still be
        # consumed, or it would be read as the next request line.
        _call(connection, "PATCH", f"{DATA}/sobjects/Contact/External_Id__c/C-1", {"x": 1}),
        _call(connection, "GET", f"{DATA}/nothing/here", token=token),
        _call(connection, "GET", f"{DATA}/sobjects", token=token),
    ]
    assert [a.status for a in answers] == [200, 401, 404, 200]
    for answer in answers:
        assert answer.getheader("Content-Length") is not None
        assert answer.getheader("Connection") != "close"
    after = _transport(sandbox)
    # Four requests, one TLS handshake; the admin call reading the counters opens its own.
    assert after["tls_handshakes"] - before["tls_handshakes"] == 2
    assert after["reused"] - before["reused"] == 3


def test_injected_faults_keep_the_connection_usable(
    sandbox: SandboxHandle, connection: http.client.HTTPSConnection
) -> None:
    token = sandbox.access_token()
    for status in ("503", "502", "500", "429"):
        sandbox.set_faults(http_error_rate=None)
        sandbox.set_faults(http_error_rate={status: 1.0})
        answer = _call(connection, "GET", f"{DATA}/limits", token=token)
        assert answer.status == int(status)
        assert answer.getheader("Content-Length") is not None
    sandbox.set_faults(http_error_rate=None)
    assert _call(connection, "GET", f"{DATA}/limits", token=token).status == 200


def test_a_connection_idle_too_long_is_reset_at_its_next_request(
    sandbox: SandboxHandle, connection: http.client.HTTPSConnection
) -> None:
    token = sandbox.access_token()
    sandbox.set_faults(idle_timeout_seconds=0.3)
    assert _call(connection, "GET", f"{DATA}/limits", token=token).status == 200
    calls = sandbox.counters()["calls"]["limits"]
    time.sleep(0.8)
    # As behind a load balancer that forgot the connection: no answer, a reset.
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        _call(connection, "GET", f"{DATA}/limits", token=token)
    counters = sandbox.counters()
    assert counters["transport"]["idle_dropped"] == 1
    assert counters["transport"]["idle_resets"] == 1
    assert counters["calls"]["limits"] == calls  # the refused request never reached the org


def test_a_pooled_session_reuses_its_connection(sandbox: SandboxHandle) -> None:
    token = sandbox.access_token()
    before = _transport(sandbox)
    with sandbox.requests_session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        for _ in range(5):
            session.get(f"{sandbox.base_url}{DATA}/limits", timeout=10).raise_for_status()
    after = _transport(sandbox)
    assert after["requests"] - before["requests"] == 6  # 5 calls and the counters' own
    assert after["connections"] - before["connections"] == 2


def test_the_reset_fault_resets_a_kept_alive_connection(sandbox: SandboxHandle) -> None:
    token = sandbox.access_token()
    with sandbox.requests_session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        url = f"{sandbox.base_url}{DATA}/limits"
        session.get(url, timeout=10).raise_for_status()
        sandbox.set_faults(reset_rate=1.0)
        with pytest.raises(requests.exceptions.RequestException):
            session.get(url, timeout=10)
        sandbox.set_faults(reset_rate=None)
        assert session.get(url, timeout=10).status_code == 200


def test_stopping_does_not_wait_for_idle_clients() -> None:
    with running_sandbox() as sandbox:
        context = ssl.create_default_context(cafile=sandbox.ca_path)
        conn = http.client.HTTPSConnection("127.0.0.1", sandbox.port, context=context)
        assert _call(conn, "GET", "/services/data").status == 200
        started = time.monotonic()
        sandbox.server.stop()
        assert time.monotonic() - started < 2
        conn.close()
