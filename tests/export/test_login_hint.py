"""A refused login names the config keys of the auth mode in use, and only those (issue 12
§6: the invalid_client hint named ``username`` in client-credentials mode). Against the
sandbox org over HTTPS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crm_export.config import SalesforceConfig, Secret
from crm_export.errors import SalesforceConfigurationError
from crm_export.salesforce import Authenticator, HttpSession, trust_store
from crm_export.sandbox.testing import SandboxHandle


def refused_login(sandbox: SandboxHandle, **settings: Any) -> str:
    cfg = SalesforceConfig.model_validate(
        {
            "login_url": sandbox.base_url,
            "client_id": sandbox.client_id,
            "ca_bundle": Path(sandbox.ca_path),
            **settings,
        }
    )
    session = HttpSession(5, trust_store(cfg.ca_bundle))
    with pytest.raises(SalesforceConfigurationError) as refused:
        Authenticator(cfg, session).login()
    session.close()
    return str(refused.value)


def test_client_credentials_names_the_client_id_and_where_the_secret_came_from(
    sandbox: SandboxHandle,
) -> None:
    text = refused_login(
        sandbox,
        auth="client_credentials",
        client_secret=Secret("not-the-secret", "env SF_CLIENT_SECRET"),
    )
    assert "invalid_client" in text
    assert text.endswith(
        "Check salesforce.client_id and salesforce.client_secret (from env SF_CLIENT_SECRET)."
    )
    assert "username" not in text and "not-the-secret" not in text


def test_the_password_flow_names_its_four_keys(sandbox: SandboxHandle) -> None:
    text = refused_login(
        sandbox,
        auth="password",
        client_secret=Secret(sandbox.client_secret, "file /run/secrets/sf"),
        username="nobody@example.test",
        password=Secret("wrong-password", "env SF_PASSWORD"),
    )
    assert text.endswith(
        "Check salesforce.client_id, salesforce.client_secret (from file /run/secrets/sf), "
        "salesforce.username and salesforce.password (from env SF_PASSWORD)."
    )
