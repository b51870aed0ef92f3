"""A PostgreSQL URL without the postgres extra installed (issue 14 §1): a config problem that
names the key and the pip command, not a ModuleNotFoundError traceback at the first
connection.

psycopg is installed in the test environment, so each run blocks it in a fresh interpreter,
the two ways an import can be refused: a meta path finder that refuses it (as an import
hook would), and a ``None`` entry in ``sys.modules`` (Python's own way to block a module).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLANTED = "PLANTED-DB-PASSWORD"
PG_URL = f"postgresql+psycopg://crm:{PLANTED}@127.0.0.1:1/crm"
PIP = (
    "PostgreSQL needs the psycopg driver, which is not installed: "
    "pip install 'crm-export[postgres]'"
)

BLOCKERS = {
    "import hook": """
class NoPsycopg:
    def find_spec(self, name, path=None, target=None):
        if name == "psycopg" or name.startswith("psycopg."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoPsycopg())
""",
    "sys.modules": 'sys.modules["psycopg"] = None\n',
}


def write_config(tmp_path: Path, *, state_url: str, source_url: str | None = None) -> Path:
    source = f'source_url = "{source_url}"\n' if source_url else ""
    path = tmp_path / "crm-export.toml"
    path.write_text(
        f"""
[database]
url = "{state_url}"

[salesforce]
login_url = "https://acme.my.salesforce.com"
client_id = "3MVG9example"
client_secret_env = "SF_CLIENT_SECRET"

[[streams]]
name = "contacts"
table = "contacts"
{source}key = "id"
order_by = "updated_at"
sobject = "Contact"
external_id_field = "External_Id__c"

[streams.fields]
LastName = "last_name"
""",
        encoding="utf-8",
    )
    return path


def crm_export(*args: str, config: Path, blocker: str | None) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + (BLOCKERS[blocker] if blocker else "")
    program = prelude + "from crm_export.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_EXPORT", "SF_"))}
    env["SF_CLIENT_SECRET"] = "not-used-here"
    return subprocess.run(
        [sys.executable, "-c", program, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=config.parent,
        check=False,
    )


@pytest.mark.parametrize("blocker", sorted(BLOCKERS))
def test_a_postgresql_state_database_without_psycopg_is_a_config_problem(
    tmp_path: Path, blocker: str
) -> None:
    config = write_config(tmp_path, state_url=PG_URL)

    job = crm_export("job", "CRMExport", config=config, blocker=blocker)

    assert job.returncode == 2, job.stderr
    assert job.stderr == f"crm-export: invalid config {config}:\n  - database.url: {PIP}\n"
    assert job.stdout == ""
    assert PLANTED not in job.stderr


def test_a_postgresql_source_without_psycopg_names_the_stream(tmp_path: Path) -> None:
    config = write_config(tmp_path, state_url="sqlite:///state.db", source_url=PG_URL)

    status = crm_export("status", config=config, blocker="import hook")

    assert status.returncode == 2, status.stderr
    assert f'streams[0] ("contacts").source_url: {PIP}' in status.stderr
    assert "Traceback" not in status.stderr
    assert PLANTED not in status.stderr
    assert not (tmp_path / "state.db").exists()


def test_with_psycopg_the_same_config_is_accepted(tmp_path: Path) -> None:
    # The control: the problem comes from the missing driver, not from the URL. Offline SQL
    # needs no server, so the command completes.
    config = write_config(tmp_path, state_url=PG_URL)

    offline = crm_export("db", "upgrade", "--sql", config=config, blocker=None)

    assert offline.returncode == 0, offline.stderr
    assert "CREATE TABLE" in offline.stdout
