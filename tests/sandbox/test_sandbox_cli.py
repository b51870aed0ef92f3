"""``sandbox serve`` and ``sandbox records`` as a user runs them: separate processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crm_export.sandbox import cli
from crm_export.sandbox.testing import SandboxHandle
from tests.sandbox.sandbox_helpers import Salesforce, contact, upsert_contacts

REPO = Path(__file__).resolve().parents[2]

CLIENT_SCRIPT = """\
import sys, requests
from simple_salesforce import Salesforce
base_url, ca = sys.argv[1], sys.argv[2]
session = requests.Session(); session.verify = ca; session.trust_env = False
token = session.post(f"{base_url}/services/oauth2/token", data={"grant_type": "client_credentials"},
                     auth=("crm-export-sandbox", "sandbox-secret")).json()["access_token"]
sf = Salesforce(instance_url=base_url, session_id=token, session=session, version="64.0")
records = [{"attributes": {"type": "Contact"}, "External_Id__c": "C-1", "LastName": "Smith"},
           {"attributes": {"type": "Contact"}, "External_Id__c": "C-2", "Email": "x@example.org"}]
results = sf.restful("composite/sobjects/Contact/External_Id__c", method="PATCH",
                     json={"allOrNone": False, "records": records})
print([r["success"] for r in results]); session.close()
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_export.sandbox.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(90)
def test_serve_accepts_a_script_and_records_shows_the_rejected_record(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    script = tmp_path / "push.py"
    script.write_text(CLIENT_SCRIPT)
    command = [sys.executable, "-m", "crm_export.sandbox.cli", "serve"]
    command += ["--port", "0", "--state-dir", str(state_dir)]
    with subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stdout is not None
        banner = []
        for line in server.stdout:
            banner.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        text = "".join(banner)
        assert "client_id=crm-export-sandbox client_secret=sandbox-secret" in text
        assert "username=integration@sandbox.local password=sandbox-password" in text
        base_url = text.split("listening on ")[1].split()[0]
        ca_path = text.split("clients must trust it): ")[1].split()[0]
        assert base_url.startswith("https://127.0.0.1:") and Path(ca_path).is_absolute()
        assert (state_dir / "sandbox.json").exists()

        pushed = subprocess.run(
            [sys.executable, str(script), base_url, ca_path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pushed.returncode == 0, pushed.stderr
        assert pushed.stdout.strip() == "[True, False]"

        shown = run_cli("records", "--state-dir", str(state_dir))
        assert shown.returncode == 0, shown.stderr
        assert "Contact: 1 record" in shown.stdout
        assert "Smith" in shown.stdout
        assert "Rejected records: 1" in shown.stdout
        rejected_line = next(line for line in shown.stdout.splitlines() if "C-2" in line)
        assert "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]" in rejected_line
        assert "composite_upsert=1" in shown.stdout
        # The client script's token and upsert went over one kept-alive connection.
        connections = next(line for line in shown.stdout.splitlines() if "Connections:" in line)
        assert "reused=" in connections and "idle_dropped=0" in connections

        raw = run_cli("records", "--url", base_url, "--ca", ca_path, "--json")
        data = json.loads(raw.stdout)
        assert data["records"]["Contact"][0]["External_Id__c"] == "C-1"
        assert data["counters"]["records"]["failed"] == 1

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert server.stderr is not None
        assert server.stderr.read() == ""  # quiet: no request log without --verbose
    assert not (state_dir / "sandbox.json").exists()


def test_serve_with_an_invalid_org_file_exits_2_naming_the_problem(tmp_path: Path) -> None:
    org = tmp_path / "org.toml"
    org.write_text('[objects.Contact.fields.LastName]\ntype = "blob"\n')
    result = run_cli("serve", "--port", "0", "--org", str(org), "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert "objects.Contact.fields.LastName.type" in result.stderr


def test_records_without_a_running_sandbox_says_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["records", "--state-dir", str(tmp_path)]) == 1
    assert "crm-export sandbox serve" in capsys.readouterr().err


def test_add_commands_registers_the_sandbox_command() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="crm-export")
    cli.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sandbox", "serve", "--faults", '{"latency_ms": 5}'])
    assert args.func is cli.serve and args.port == 8443 and args.seed == 0
    args = parser.parse_args(["sandbox", "records", "--sobject", "Contact", "--json"])
    assert args.func is cli.records and args.json is True


def test_records_shows_the_first_20_of_each_object_unless_told_otherwise(
    sandbox: SandboxHandle, sf: Salesforce, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [contact(f"C-{i}", LastName=f"Last{i}") for i in range(1, 31)]
    bad = [contact(f"BAD-{i}") for i in range(1, 26)]  # no LastName: REQUIRED_FIELD_MISSING
    upsert_contacts(sf, good[:15] + bad[:10])
    upsert_contacts(sf, good[15:] + bad[10:])
    where = ["--url", sandbox.base_url, "--ca", sandbox.ca_path]

    def shown(*args: str) -> str:
        assert cli.main(["records", *where, *args]) == 0
        return capsys.readouterr().out

    default = shown()
    assert "Contact: 30 records (the first 20; --limit N shows more, --limit 0 all)" in default
    assert "C-20" in default and "C-21" not in default
    assert "Rejected records: 25 (the newest 20;" in default
    assert "BAD-6 " in default and "BAD-5 " not in default

    assert "Contact: 30 records\n" in shown("--limit", "0")
    five = shown("--sobject", "contact", "--limit", "5")
    assert "contact: 30 records (the first 5;" in five and "C-6" not in five
    assert "Rejected records: 25 (the newest 5;" in five and "BAD-21 " in five

    raw = json.loads(shown("--json", "--limit", "3"))
    assert [r["External_Id__c"] for r in raw["records"]["Contact"]] == ["C-1", "C-2", "C-3"]
    assert raw["counters"]["stored"] == {"Contact": 30}

    with pytest.raises(SystemExit):
        cli.main(["records", *where, "--limit", "-1"])
    assert "a whole number >= 0" in capsys.readouterr().err
