"""Calls in flight and streams side by side, at a real org's latency (issue 11 §2, §5).

    .venv/bin/python bench/parallel.py                     # 100,000 records, 100 ms per call
    .venv/bin/python bench/parallel.py --records 20000 --latency-ms 50

The sandbox org runs as its own process, ``--latency-ms`` added to every call (a real org
seen from another region). Measured in one run, on the same source and the same org, each
from an empty org and a fresh SQLite state database, skip mode, batches of 200:

* ``plain 4-thread loop``: the floor. Four threads PATCH sObject Collections of 200 read
  from the source, one kept-alive connection each: no state, no positions, no ExportErrors,
  no retries.
* crm-export (``crm-export job CRMExport`` as a process, start-up and login included):
  one stream with ``max_in_flight`` = 1 and = 4; the same table as four streams
  (``id % 4``) with ``max_parallel_streams`` = 1 and = 4 (one call in flight each).

Printed: records/s, the in-flight and side-by-side speed-ups (goal >= 3.5x), and each
parallel run against the plain loop (goal >= 0.9x), also with the fixed cost of a run
(an idle run, measured here) taken out. Every scenario's result is checked: every record
in the org once, and export_runs counting exactly the calls the org received.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The shared harness is the tests package at the repository root (tests/harness.py).
_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

import requests  # noqa: E402

from crm_export.sandbox.admin_client import verified_session  # noqa: E402
from tests.harness import (  # noqa: E402
    CONTACT_FIELDS,
    SandboxProcess,
    contact_rows,
    job_env,
    run_cli,
    split_streams,
    sql,
    sqlite_url,
    write_config,
    write_contacts,
)

SECRET = "sandbox-secret"
API = "64.0"
BATCH = 200


@dataclass
class Result:
    name: str
    records: int
    seconds: float
    calls: int

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else float("inf")


def _batches(source: Path) -> Iterator[list[dict[str, object]]]:
    columns = ["id", *CONTACT_FIELDS.values()]
    with sqlite3.connect(source) as db:
        cursor = db.execute(f"SELECT {', '.join(columns)} FROM contacts ORDER BY updated_at, id")
        batch: list[dict[str, object]] = []
        for values in cursor:
            row = dict(zip(columns, values, strict=True))
            record: dict[str, object] = {"External_Id__c": str(row["id"])}
            record.update({f: row[c] for f, c in CONTACT_FIELDS.items() if row[c] is not None})
            batch.append(record)
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch
    db.close()


def plain_loop(sandbox: SandboxProcess, source: Path, records: int, threads: int) -> Result:
    """What a hand-written exporter with a thread pool does: the floor."""
    started = time.perf_counter()
    org = sandbox.org
    with verified_session(org.ca_path) as login:
        answer = login.post(
            f"{org.base_url}/services/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(org.client_id, org.client_secret),
            timeout=30,
        )
    answer.raise_for_status()
    token = str(answer.json()["access_token"])
    url = f"{org.base_url}/services/data/v{API}/composite/sobjects/Contact/External_Id__c"
    local = threading.local()
    sessions: list[requests.Session] = []

    def send(batch: list[dict[str, object]]) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = verified_session(org.ca_path)
            session.headers["Authorization"] = f"Bearer {token}"
            sessions.append(session)
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": "Contact"}, **r} for r in batch],
        }
        session.patch(url, json=body, timeout=60).raise_for_status()

    with ThreadPoolExecutor(threads) as pool:
        calls = len(list(pool.map(send, _batches(source))))
    for session in sessions:
        session.close()
    return Result(f"plain {threads}-thread loop", records, time.perf_counter() - started, calls)


def crm_export(
    sandbox: SandboxProcess,
    workdir: Path,
    source: Path,
    records: int,
    *,
    name: str,
    streams: int,
    in_flight: int,
    parallel: int,
) -> Result:
    state = workdir / f"state-{name.replace(' ', '-').replace(',', '')}.db"
    config = write_config(
        workdir / "crm-export.toml",
        state_url=sqlite_url(state),
        org=sandbox.org,
        streams=split_streams(sqlite_url(source), streams),
        pause_on_error=False,
        batch_size=BATCH,
        log_level="warning",
        # Collections calls are what is measured: Bulk (bench/bulk.py) stays off.
        export_lines=(
            f"max_in_flight = {in_flight}\nmax_parallel_streams = {parallel}\nbulk_threshold = 0"
        ),
    )
    before = sandbox.admin.counters()
    started = time.perf_counter()
    done = run_cli("job", "CRMExport", "--config", str(config), env=job_env(SECRET))
    seconds = time.perf_counter() - started
    after = sandbox.admin.counters()
    if done.returncode != 0 or done.stdout.count(": completed") != streams:
        raise SystemExit(f"{name}: crm-export failed ({done.returncode}):\n{done.stdout}")
    calls = _charged(after) - _charged(before)
    counted = sum(int(r["api_calls"]) for r in sql(sqlite_url(state), _RUN_CALLS))
    if records and counted != calls:
        raise SystemExit(f"{name}: export_runs counts {counted} calls, the org received {calls}")
    return Result(name, records, seconds, calls)


_RUN_CALLS = "SELECT api_calls FROM export_runs"
_FREE = {"token", "soap_login", "versions"}


def _charged(counters: dict[str, Any]) -> int:
    return sum(int(n) for endpoint, n in counters["calls"].items() if endpoint not in _FREE)


def _check_org(sandbox: SandboxProcess, expected: int, name: str) -> None:
    stored = sandbox.admin.records("Contact")
    ids = {str(r["External_Id__c"]) for r in stored}
    if len(stored) != expected or len(ids) != expected:
        raise SystemExit(f"{name}: the org holds {len(stored)} contacts, expected {expected}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=int, default=100, help="added to every org call")
    args = parser.parse_args()
    n = args.records
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="crm-export-bench-parallel-") as tmp:
        workdir = Path(tmp)
        source = workdir / "source.db"
        write_contacts(source, contact_rows(range(1, n + 1)).rows)
        with SandboxProcess(workdir, faults={"latency_ms": args.latency_ms}) as sandbox:

            def measure(key: str, run: Any) -> None:
                sandbox.admin.reset()
                result: Result = run()
                _check_org(sandbox, n, result.name)
                print(f"measured: {result.name}: {result.seconds:.1f}s", file=sys.stderr)
                results[key] = result

            measure("loop", lambda: plain_loop(sandbox, source, n, 4))
            for key, streams, in_flight, parallel in (
                ("one_1", 1, 1, 1),
                ("one_4", 1, 4, 1),
                ("four_1", 4, 1, 1),
                ("four_4", 4, 1, 4),
            ):
                name = f"{streams} stream{'s' if streams > 1 else ''}, in flight {in_flight}, "
                name += f"parallel {parallel}"
                measure(
                    key,
                    lambda name=name, s=streams, f=in_flight, p=parallel: crm_export(
                        sandbox, workdir, source, n, name=name, streams=s, in_flight=f, parallel=p
                    ),
                )
            # What every run costs regardless: the same job with nothing new.
            idle: float = crm_export(
                sandbox,
                workdir,
                source,
                0,
                name="1 stream, in flight 4, parallel 1",
                streams=1,
                in_flight=4,
                parallel=1,
            ).seconds

    loop = results["loop"]
    print(
        f"\nparallel: {n} contacts, sandbox latency {args.latency_ms} ms per call, "
        f"batches of {BATCH}, skip mode, SQLite state, {os.cpu_count()} CPUs\n"
    )
    header = f"{'scenario':42} {'calls':>6} {'seconds':>8} {'rec/s':>8} {'vs loop':>8}"
    header += f" {'steady vs loop':>15}"
    print(header)
    print("-" * len(header))
    for r in results.values():
        steady = r.records / (r.seconds - idle) / loop.rate if r is not loop else 1.0
        print(
            f"{r.name:42} {r.calls:6d} {r.seconds:8.2f} {r.rate:8.0f} "
            f"{r.rate / loop.rate:8.2f} {steady:15.2f}"
        )
    print(f"\nfixed cost of a run with nothing to export: {idle:.2f} s")
    gain = results["one_4"].rate / results["one_1"].rate
    side = results["four_4"].rate / results["four_1"].rate
    print(f"max_in_flight 4 vs 1, one stream:          {gain:.2f}x (goal >= 3.5)")
    print(f"max_parallel_streams 4 vs 1, four streams: {side:.2f}x (goal >= 3.5)")
    print(
        f"one stream, 4 in flight vs plain loop:     {results['one_4'].rate / loop.rate:.2f}x"
        " (goal >= 0.9)"
    )
    print(
        f"four streams side by side vs plain loop:   {results['four_4'].rate / loop.rate:.2f}x"
        " (goal >= 0.9)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
