"""Peak memory of the sandbox org while a rehearsal loads many records: in memory, and with
``--data FILE`` (records kept in the SQLite file only).

    .venv/bin/python bench/sandbox_memory.py                    # 200,000 records
    .venv/bin/python bench/sandbox_memory.py --records 50000

Each mode starts ``crm-export sandbox serve`` as its own process and loads the same contacts
through sObject Collections calls of 200 on one kept-alive connection, then reads the
process's peak resident set size (VmHWM in /proc) and prints the file store's figures as a
ratio of the in-memory run measured in the same run. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The shared harness is the tests package at the repository root (tests/harness.py).
_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from crm_export.sandbox.admin_client import verified_session  # noqa: E402
from tests.harness import SandboxProcess  # noqa: E402

API = "64.0"
BATCH = 200


@dataclass
class Run:
    mode: str
    records: int
    seconds: float
    start_mib: float
    peak_mib: float

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.start_mib


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {key} in /proc/{pid}/status")


def _contact(i: int) -> dict[str, object]:
    return {
        "attributes": {"type": "Contact"},
        "External_Id__c": f"C-{i:08d}",
        "FirstName": f"First{i}",
        "LastName": f"Last{i}",
        "Email": f"contact{i}@acme.test",
        "Phone": f"+1 555 {i % 10_000_000:07d}",
        "Title": "Head of Procurement",
        "Description": f"Imported contact {i}. " + "Notes about the account and its history. " * 14,
    }


def load(workdir: Path, mode: str, records: int) -> Run:
    data = workdir / "org.sqlite" if mode == "file" else None
    with SandboxProcess(workdir / mode, data=data) as sandbox:
        pid = sandbox.proc.pid
        start = _status_mib(pid, "VmRSS")
        url = (
            f"{sandbox.org.base_url}/services/data/v{API}/composite/sobjects/Contact/External_Id__c"
        )
        with verified_session(sandbox.org.ca_path) as session:
            token = session.post(
                f"{sandbox.org.base_url}/services/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(sandbox.org.client_id, sandbox.org.client_secret),
                timeout=30,
            ).json()["access_token"]
            session.headers["Authorization"] = f"Bearer {token}"
            started = time.perf_counter()
            for first in range(0, records, BATCH):
                batch = [_contact(i) for i in range(first, min(first + BATCH, records))]
                answer = session.patch(url, json={"allOrNone": False, "records": batch}, timeout=60)
                answer.raise_for_status()
                if not all(r["success"] for r in answer.json()):
                    raise SystemExit(f"{mode}: a record was rejected: {answer.text[:300]}")
            seconds = time.perf_counter() - started
        peak = _status_mib(pid, "VmHWM")
        stored = sandbox.admin.counters()["records"]["created"]
        if stored != records:
            raise SystemExit(f"{mode}: the org created {stored} records, expected {records}")
    return Run(mode, records, seconds, start, peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crm-export-bench-") as tmp:
        runs = [load(Path(tmp), mode, args.records) for mode in ("memory", "file")]
    memory, file = runs
    print(f"sandbox memory: {args.records} contacts loaded by Collections calls of {BATCH}\n")
    header = f"{'store':<8} {'seconds':>8} {'rec/s':>7} {'start MiB':>10} {'peak MiB':>9}"
    header += f" {'growth MiB':>11} {'peak vs memory':>15} {'growth vs memory':>17}"
    print(header)
    print("-" * len(header))
    for run in runs:
        print(
            f"{run.mode:<8} {run.seconds:>8.1f} {run.records / run.seconds:>7.0f}"
            f" {run.start_mib:>10.1f} {run.peak_mib:>9.1f} {run.growth_mib:>11.1f}"
            f" {run.peak_mib / memory.peak_mib:>15.2f}"
            f" {run.growth_mib / memory.growth_mib:>17.3f}"
        )
    per_record = memory.growth_mib * 1024 / args.records
    print(f"\nin memory: {per_record:.2f} KiB per record; with --data: {file.growth_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
