"""A CRMExport run says when a stream's source table lacks the index its reads need, with
the statement to run; once it is run, the run is silent about it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

import sqlalchemy as sa
from structlog.testing import capture_logs

from crm_export.ports import RunOutcome
from tests.export.export_scenario import Scenario


def index_warnings(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "source_index_missing"]


def test_a_run_warns_once_with_the_statement_and_not_after_it_is_run(scenario: Scenario) -> None:
    # The scenario's key is the table's INTEGER PRIMARY KEY, but nothing indexes updated_at.
    scenario.add_many(range(1, 11))
    with capture_logs() as logs:
        result = scenario.run()
    assert result.outcome is RunOutcome.COMPLETED and result.counts.exported == 10
    [warning] = index_warnings(logs)
    assert warning["log_level"] == "warning"
    assert warning["stream"] == "contacts" and warning["table"] == "contacts"
    statement = warning["statement"]
    assert statement.startswith("CREATE INDEX") and "ON contacts (updated_at, id)" in statement
    assert statement in warning["detail"] and "'contacts'" in warning["detail"]

    engine = sa.create_engine(f"sqlite:///{scenario.source}")
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()
    with capture_logs() as logs:
        again = scenario.run()
    assert again.outcome is RunOutcome.COMPLETED
    assert index_warnings(logs) == []


def test_status_shows_the_statement_until_it_is_run(scenario: Scenario) -> None:
    scenario.add_many(range(1, 4))
    scenario.run()
    config = str(scenario.config().path)
    env = {**os.environ, "SF_CLIENT_SECRET": scenario.sandbox.client_secret}
    status = [sys.executable, "-m", "crm_export", "status", "--config", config]
    done = subprocess.run([*status, "--json"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    [entry] = json.loads(done.stdout)
    statement = entry["missing_index"]
    assert statement.startswith("CREATE INDEX") and "ON contacts (updated_at, id)" in statement
    text = subprocess.run(status, capture_output=True, text=True, env=env).stdout
    assert "contacts: the source table has no index" in text and statement in text

    engine = sa.create_engine(f"sqlite:///{scenario.source}")
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()
    done = subprocess.run([*status, "--json"], capture_output=True, text=True, env=env)
    assert json.loads(done.stdout)[0]["missing_index"] is None
