"""Logging in fails fast on a login URL that cannot be right, and only then: the command
line as users run it (real subprocesses), and the sink against the sandbox org."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_export.config import load_config
from crm_export.errors import OrgMismatchError, RetriesExhaustedError
from crm_export.retry import SystemClock
from crm_export.salesforce import SalesforceSink
from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.test_cli import crm_export, make_config


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("login_url", "why"),
    [
        ("https://acme.my.salesforce-typo.invalid", "does not resolve"),
        (f"https://127.0.0.1:{closed_port()}", "refuses connections"),
    ],
    ids=["unresolvable", "refused"],
)
def test_a_login_url_that_cannot_be_right_fails_in_seconds_naming_the_key(
    tmp_path: Path, sandbox: SandboxHandle, login_url: str, why: str
) -> None:
    config = make_config(tmp_path, sandbox)
    config.write_text(config.read_text().replace(sandbox.base_url, login_url))
    started = time.monotonic()
    done = crm_export(
        "job", "CRMExport", "--config", str(config), env={"SF_CLIENT_SECRET": "s3cret"}
    )
    assert time.monotonic() - started < 10
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CRMExport contacts: failed" in done.stdout
    assert f"salesforce.login_url: {login_url}" in done.stdout and why in done.stdout
    # Nothing retried: one failed login attempt, logged as a run failure.
    assert "salesforce_retry" not in done.stderr


def test_an_outage_after_a_successful_login_is_ridden_out_as_before(tmp_path: Path) -> None:
    with running_sandbox() as sandbox:
        config = make_config(tmp_path, sandbox)
        text = config.read_text().replace(
            "[logging]",
            "[retry]\nmax_attempts = 3\ninitial_backoff_seconds = 0.01\n"
            "max_backoff_seconds = 0.02\n\n[logging]",
        )
        config.write_text(text)
        cfg = load_config(config, environ={"SF_CLIENT_SECRET": sandbox.client_secret})
        sink = SalesforceSink(cfg.salesforce, cfg.retry, SystemClock())
        assert sink.describe("Contact") is not None  # logged in, Salesforce answered
    # The sandbox is gone now: its port refuses connections, as after a crash.
    try:
        sink._client = None  # the next call logs in again, as after an expired session
        with pytest.raises(RetriesExhaustedError) as info:
            sink.describe("Account")
    finally:
        sink.close()
    assert not isinstance(info.value, OrgMismatchError)
    assert "Nothing was skipped" in str(info.value)
