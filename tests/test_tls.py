"""crm-export trusts the public CAs plus ``ca_bundle``, and nothing else: not a CA it was not
given, and not one slipped in through REQUESTS_CA_BUNDLE. Over real HTTPS to the sandbox org."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.harness import (
    Org,
    Stream,
    contact_rows,
    job_env,
    run_cli,
    sql,
    sqlite_url,
    write_config,
    write_contacts,
)


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


def _config(tmp_path: Path, sandbox: SandboxHandle, ca_path: str) -> tuple[Path, str]:
    source = tmp_path / "source.db"
    write_contacts(source, contact_rows(range(1, 4)).rows)
    state_url = sqlite_url(tmp_path / "state.db")
    config = write_config(
        tmp_path / "crm-export.toml",
        state_url=state_url,
        org=Org(sandbox.base_url, ca_path),
        streams=[Stream("contacts", sqlite_url(source))],
    )
    return config, state_url


def test_the_configured_ca_bundle_is_trusted(tmp_path: Path, sandbox: SandboxHandle) -> None:
    config, _ = _config(tmp_path, sandbox, sandbox.ca_path)
    done = run_cli("job", "CRMExport", "--config", str(config), env=job_env("sandbox-secret"))
    assert done.returncode == 0, done.stderr
    assert len(sandbox.records("Contact")) == 3


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path, sandbox: SandboxHandle) -> None:
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    config, state_url = _config(tmp_path, sandbox, str(stranger))
    done = run_cli("job", "CRMExport", "--config", str(config), env=job_env("sandbox-secret"))
    assert done.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in done.stdout + done.stderr
    assert sandbox.records("Contact") == []
    assert sql(state_url, "SELECT * FROM ExportErrors") == []


def test_requests_ca_bundle_in_the_environment_is_ignored(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    # The sandbox CA only in REQUESTS_CA_BUNDLE, the config's ca_bundle another CA: were the
    # environment read, it would silently replace what the config says.
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    config, _ = _config(tmp_path, sandbox, str(stranger))
    env = job_env(
        "sandbox-secret", REQUESTS_CA_BUNDLE=sandbox.ca_path, CURL_CA_BUNDLE=sandbox.ca_path
    )
    done = run_cli("job", "CRMExport", "--config", str(config), env=env)
    assert done.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in done.stdout + done.stderr
    assert sandbox.records("Contact") == []


def test_a_ca_bundle_that_is_not_a_certificate_is_named(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    junk = tmp_path / "not-a-ca.pem"
    junk.write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        encoding="utf-8",
    )
    config, _ = _config(tmp_path, sandbox, str(junk))
    done = run_cli("job", "CRMExport", "--config", str(config), env=job_env("sandbox-secret"))
    assert done.returncode == 1, done.stderr
    assert f"ca_bundle {junk}" in done.stdout + done.stderr, done.stdout + done.stderr
    assert sandbox.records("Contact") == []
