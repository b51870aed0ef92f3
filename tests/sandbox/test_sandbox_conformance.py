"""Two independent clients, one scenario: simple-salesforce and jsforce 3 must both see the
sandbox answer as a real org would (tests/sandbox/conformance/scenario.json).

The jsforce half needs Node and `npm ci` in tests/sandbox/conformance (.ci/run does it). It
is skipped where they are missing, and fails instead under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_export.sandbox.testing import running_sandbox

HERE = Path(__file__).parent / "conformance"
SCENARIO = json.loads((HERE / "scenario.json").read_text(encoding="utf-8"))
STEPS = SCENARIO["steps"]
CLIENTS = ("simple-salesforce", "jsforce")


def mismatches(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Where ``actual`` differs: objects on the keys expected, lists in full and in order."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where or '.'}: expected an object, got {json.dumps(actual)}"]
        problems: list[str] = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{where}.{key}: missing")
            else:
                problems += mismatches(value, actual[key], f"{where}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where or '.'}: expected {json.dumps(expected)}, got {json.dumps(actual)}"]
        return [
            p for i, e in enumerate(expected) for p in mismatches(e, actual[i], f"{where}[{i}]")
        ]
    if expected != actual:
        return [f"{where or '.'}: expected {json.dumps(expected)}, got {json.dumps(actual)}"]
    return []


def _run_python() -> list[dict[str, Any]]:
    from tests.sandbox.conformance.python_client import SimpleSalesforceClient, run

    with running_sandbox() as sandbox, sandbox.requests_session() as session:
        return run(SimpleSalesforceClient(sandbox.base_url, sandbox.access_token(), session), STEPS)


def _missing_node() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "node_modules" / "jsforce" / "package.json").is_file():
        return "jsforce is not installed: run `npm ci` in tests/sandbox/conformance"
    return None


def _run_jsforce() -> list[dict[str, Any]]:
    missing = _missing_node()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the jsforce conformance run needs Node and jsforce: {missing}")
        pytest.skip(missing)
    with running_sandbox() as sandbox:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.upper().endswith("_PROXY") and key != "NODE_TLS_REJECT_UNAUTHORIZED"
        }
        env.update(
            NODE_EXTRA_CA_CERTS=sandbox.ca_path,
            SANDBOX_URL=sandbox.base_url,
            SANDBOX_TOKEN=sandbox.access_token(),
        )
        done = subprocess.run(
            ["node", str(HERE / "run.mjs"), str(HERE / "scenario.json")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


_RUNS: dict[str, list[dict[str, Any]]] = {}


@pytest.fixture(scope="module", params=CLIENTS)
def outcomes(request: pytest.FixtureRequest) -> Iterator[dict[str, dict[str, Any]]]:
    client = request.param
    if client not in _RUNS:
        _RUNS[client] = _run_python() if client == "simple-salesforce" else _run_jsforce()
    yield {entry["name"]: entry for entry in _RUNS[client]}


def _step_param(step: dict[str, Any]) -> Any:
    marks = []
    if "known_difference" in step:
        marks.append(pytest.mark.xfail(reason=step["known_difference"], strict=True))
    return pytest.param(step, id=step["name"].replace(" ", "-"), marks=marks)


@pytest.mark.parametrize("step", [_step_param(s) for s in STEPS])
def test_the_sandbox_answers_each_client_as_a_real_org(
    outcomes: dict[str, dict[str, Any]], step: dict[str, Any]
) -> None:
    outcome = outcomes[step["name"]]
    assert "error" not in outcome, f"{step['name']} raised: {outcome['error']}"
    problems = mismatches(step["expect"], outcome["result"])
    assert not problems, "\n".join(problems)
