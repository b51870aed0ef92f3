"""What a command imports is what it costs to start (issue 11 §4): ``--help`` and a
CRMExport run with nothing to send load neither Alembic, nor the HTTP stack
(simple-salesforce, requests), nor the sandbox server. Checked in a fresh interpreter
through ``sys.modules``, not by timing. (rich is not on the list: structlog imports it
whenever it is installed.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crm_export.sandbox.testing import SandboxHandle
from tests.test_cli import make_config, sandbox

__all__ = ["sandbox"]  # the fixture, re-used

# Loaded only by the paths that need them: a migration, a run that sends, a sandbox.
HEAVY = ("alembic", "simple_salesforce", "requests", "crm_export.sandbox.server")

PROBE = """
import json, sys
from crm_export.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def loaded(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules ``crm-export ARGS`` has loaded when it is done."""
    report = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=tmp_path,
        check=False,
    )
    assert report.exists(), done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert result["code"] in (0, None), done.stdout + done.stderr
    return set(result["modules"])


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_help_loads_nothing_heavy(tmp_path: Path) -> None:
    assert heavy(loaded(tmp_path, "--help")) == set()


def test_an_idle_run_loads_nothing_heavy_and_a_sending_run_does(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    # Skip mode: the org refuses one of the rows, which pause mode would retry every run.
    config = make_config(tmp_path, sandbox, "[export]\npause_on_error = false\n")
    env = {"SF_CLIENT_SECRET": sandbox.client_secret}
    job = ("job", "CRMExport", "--config", str(config))
    # The first run creates the SQLite state database (Alembic) and sends (HTTP stack):
    # proof that the probe sees these modules when they are used.
    first = heavy(loaded(tmp_path, *job, env=env))
    assert {"alembic", "simple_salesforce", "requests"} <= first
    idle = loaded(tmp_path, *job, env=env)
    assert heavy(idle) == set()
    assert "crm_export.store.migrations" in idle  # the schema was checked, with one query
