"""Fixtures: a running sandbox org and unmodified simple-salesforce pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.sandbox_helpers import VERSION, Salesforce


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
def session(sandbox: SandboxHandle) -> Iterator[requests.Session]:
    with sandbox.requests_session() as sess:
        yield sess


@pytest.fixture
def sf(sandbox: SandboxHandle, session: requests.Session) -> Salesforce:
    return Salesforce(
        instance_url=sandbox.base_url,
        session_id=sandbox.access_token(),
        session=session,
        version=VERSION,
    )
