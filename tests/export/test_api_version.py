"""salesforce.api_version is checked at login against the versions the org serves: a version
it does not serve stops `crm-export job` and `crm-export run` with exit 2 naming the key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.harness import (
    Org,
    Stream,
    contact_rows,
    job_env,
    run_cli,
    sqlite_url,
    write_config,
    write_contacts,
)


@pytest.fixture
def org_sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


def _config(tmp_path: Path, sandbox: SandboxHandle) -> Path:
    source = tmp_path / "app.db"
    write_contacts(source, contact_rows(range(1, 11)).rows)
    return write_config(
        tmp_path / "crm-export.toml",
        state_url=sqlite_url(tmp_path / "state.db"),
        org=Org(sandbox.base_url, sandbox.ca_path),
        streams=[Stream("contacts", sqlite_url(source))],
    )


@pytest.mark.parametrize(
    ("faults", "problem"),
    [
        ({"oldest_api_version": "65.0"}, "64.0 is retired by this org; it serves 65.0 to 66.0"),
        (
            {"newest_api_version": "63.0"},
            "64.0 is not served by this org yet; it serves 31.0 to 63.0",
        ),
    ],
)
def test_job_exits_2_naming_the_api_version(
    tmp_path: Path, org_sandbox: SandboxHandle, faults: dict[str, str], problem: str
) -> None:
    org_sandbox.set_faults(faults)
    config = _config(tmp_path, org_sandbox)
    done = run_cli("job", "CRMExport", "--config", str(config), env=job_env("sandbox-secret"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"salesforce.api_version: {problem}" in done.stderr
    counters = org_sandbox.counters()
    assert counters["calls"]["versions"] == 1
    assert "composite_upsert" not in counters["calls"]
    assert org_sandbox.records("Contact") == []


def test_the_daemon_exits_2_naming_the_api_version(
    tmp_path: Path, org_sandbox: SandboxHandle
) -> None:
    org_sandbox.set_faults(oldest_api_version="65.0")
    config = _config(tmp_path, org_sandbox)
    done = run_cli("run", "--config", str(config), env=job_env("sandbox-secret"), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    [invalid] = [e for e in events if e["event"] == "config_invalid"]
    assert invalid["key"] == "salesforce.api_version"
    assert "64.0 is retired by this org" in invalid["problems"][0]
    assert org_sandbox.records("Contact") == []


def test_a_served_version_costs_one_uncounted_call(
    tmp_path: Path, org_sandbox: SandboxHandle
) -> None:
    config = _config(tmp_path, org_sandbox)
    done = run_cli("job", "CRMExport", "--config", str(config), env=job_env("sandbox-secret"))
    assert done.returncode == 0, done.stdout + done.stderr
    counters = org_sandbox.counters()
    assert counters["calls"]["versions"] == 1
    # The allocation counts the describe of Contact and the Collections call: neither the
    # login nor the versions list.
    assert counters["calls"]["describe"] == counters["calls"]["composite_upsert"] == 1
    assert counters["api_usage"]["used"] == 2
    assert len(org_sandbox.records("Contact")) == 10
