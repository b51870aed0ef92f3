"""Operators without the Salesforce secret (issue 14 §2): the commands that never talk to
Salesforce (status, errors, db) work when the secret's variable or file is absent; the
ones that export (job) still stop with exit 2 naming the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SALESFORCE = {
    "env": 'client_secret_env = "SF_CLIENT_SECRET"',
    "file": 'client_secret_file = "secrets/sf_client_secret"',
}


def write_config(tmp_path: Path, secret_key: str) -> Path:
    path = tmp_path / "crm-export.toml"
    path.write_text(
        f"""
[database]
url = "sqlite:///state.db"

[salesforce]
login_url = "https://acme.my.salesforce.com"
client_id = "3MVG9example"
{secret_key}

[[streams]]
name = "contacts"
table = "contacts"
source_url = "sqlite:///app.db"
key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"

[streams.fields]
LastName = "last_name"
""",
        encoding="utf-8",
    )
    return path


def crm_export(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    # No SF_* variable at all: this operator has no Salesforce secret.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_EXPORT", "SF_"))}
    return subprocess.run(
        [sys.executable, "-m", "crm_export", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=config.parent,
        check=False,
    )


@pytest.mark.parametrize("source", sorted(SALESFORCE))
def test_status_errors_and_db_work_without_the_secret(tmp_path: Path, source: str) -> None:
    config = write_config(tmp_path, SALESFORCE[source])

    upgrade = crm_export("db", "upgrade", config=config)
    assert upgrade.returncode == 0, upgrade.stderr
    current = crm_export("db", "current", config=config)
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() and "base" not in current.stdout  # migrated: a revision
    status = crm_export("status", "--json", config=config)
    assert status.returncode == 0, status.stderr
    assert [s["stream"] for s in json.loads(status.stdout)] == ["contacts"]
    errors = crm_export("errors", "--json", config=config)
    assert errors.returncode == 0, errors.stderr
    assert json.loads(errors.stdout) == []
    sql = crm_export("errors", "--sql", config=config)
    assert sql.returncode == 0, sql.stderr
    assert "ExportErrors" in sql.stdout
    offline = crm_export("db", "upgrade", "--sql", config=config)
    assert offline.returncode == 0, offline.stderr


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("env", "salesforce.client_secret_env: environment variable SF_CLIENT_SECRET is not set"),
        ("file", "salesforce.client_secret_file: file "),
    ],
)
def test_job_still_needs_the_secret_and_names_its_key(
    tmp_path: Path, source: str, problem: str
) -> None:
    config = write_config(tmp_path, SALESFORCE[source])

    job = crm_export("job", "CRMExport", config=config)

    assert job.returncode == 2, job.stderr
    assert job.stderr.startswith(f"crm-export: invalid config {config}:\n")
    assert problem in job.stderr
    assert "Traceback" not in job.stderr
    assert not (tmp_path / "state.db").exists()


def test_a_mistake_in_the_secret_keys_still_stops_status(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'client_secret_env = "not a variable name"')

    status = crm_export("status", config=config)

    assert status.returncode == 2
    assert "salesforce.client_secret_env: must be the name of an environment variable" in (
        status.stderr
    )
    assert "not a variable name" not in status.stderr
