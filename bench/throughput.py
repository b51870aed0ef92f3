"""Export throughput: crm-export against the cheapest and the most common ways to do the job.

    .venv/bin/python bench/throughput.py                  # 10,000 records, 20 ms per call
    .venv/bin/python bench/throughput.py --records 50000 --latency-ms 0

The sandbox org runs as its own process, with ``--latency-ms`` added to every call. Two
baselines are measured in the same run, on the same source file and the same org:

* ``raw collections``: the floor. A bare loop that reads the source and PATCHes sObject
  Collections of 200 with a requests session: no state database, no positions, no
  ExportErrors, no retries. Whatever crm-export costs on top of it is the price of its
  guarantees.
* ``one call per record``: what a hand-written simple-salesforce script usually does,
  ``sf.Contact.upsert(...)`` per row. Measured on a slice and reported per record.

crm-export itself runs as users run it, ``crm-export job CRMExport`` as a process (so the
times include start-up, login and the schema check), with SQLite state and, when
$CRM_EXPORT_TEST_POSTGRES_URL is set, PostgreSQL state. Every scenario starts from an empty
org and a fresh state database, and its result is checked: every record in the org once.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The shared harness is the tests package at the repository root (tests/harness.py).
_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

import sqlalchemy as sa  # noqa: E402

from crm_export.sandbox.admin_client import verified_session  # noqa: E402
from crm_export.store import migrations  # noqa: E402
from tests.harness import (  # noqa: E402
    CONTACT_FIELDS,
    POSTGRES_ENV,
    SandboxProcess,
    Stream,
    contact_rows,
    job_env,
    postgres_database,
    run_cli,
    sqlite_url,
    write_config,
    write_contacts,
)
from tests.sandbox.sandbox_helpers import Salesforce  # noqa: E402

SECRET = "sandbox-secret"
API = "64.0"


@dataclass
class Result:
    name: str
    records: int
    seconds: float
    calls: int
    note: str = ""
    connections: int = 0  # TLS handshakes the scenario cost, login included

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else float("inf")


def _source_rows(source: Path, limit: int | None = None) -> Iterator[dict[str, object]]:
    columns = ["id", *CONTACT_FIELDS.values()]
    with sqlite3.connect(source) as db:
        cursor = db.execute(
            f"SELECT {', '.join(columns)} FROM contacts ORDER BY updated_at, id"
            + (f" LIMIT {int(limit)}" if limit else "")
        )
        for row in cursor:
            yield dict(zip(columns, row, strict=True))
    db.close()


def _payload(row: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {"External_Id__c": str(row["id"])}
    out.update({sf: row[col] for sf, col in CONTACT_FIELDS.items() if row[col] is not None})
    return out


def _token(sandbox: SandboxProcess) -> str:
    with verified_session(sandbox.org.ca_path) as session:
        response = session.post(
            f"{sandbox.org.base_url}/services/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(sandbox.org.client_id, sandbox.org.client_secret),
            timeout=30,
        )
    response.raise_for_status()
    return str(response.json()["access_token"])


def raw_collections(sandbox: SandboxProcess, source: Path, records: int) -> Result:
    started = time.perf_counter()
    token = _token(sandbox)
    url = f"{sandbox.org.base_url}/services/data/v{API}/composite/sobjects/Contact/External_Id__c"
    calls = 0
    batch: list[dict[str, object]] = []
    with verified_session(sandbox.org.ca_path) as session:
        session.headers["Authorization"] = f"Bearer {token}"

        def send() -> None:
            nonlocal calls
            body = {
                "allOrNone": False,
                "records": [{"attributes": {"type": "Contact"}, **r} for r in batch],
            }
            response = session.patch(url, json=body, timeout=60)
            response.raise_for_status()
            calls += 1
            batch.clear()

        for row in _source_rows(source):
            batch.append(_payload(row))
            if len(batch) == 200:
                send()
        if batch:
            send()
    return Result("raw collections (floor)", records, time.perf_counter() - started, calls)


def one_call_per_record(sandbox: SandboxProcess, source: Path, records: int) -> Result:
    started = time.perf_counter()
    session = verified_session(sandbox.org.ca_path)
    sf = Salesforce(
        instance_url=sandbox.org.base_url,
        session_id=_token(sandbox),
        session=session,
        version=API,
    )
    calls = 0
    for row in _source_rows(source, limit=records):
        payload = _payload(row)
        key = payload.pop("External_Id__c")
        sf.Contact.upsert(f"External_Id__c/{key}", payload)
        calls += 1
    session.close()
    return Result(
        "one call per record", calls, time.perf_counter() - started, calls, f"a {calls}-row slice"
    )


def crm_export_job(
    sandbox: SandboxProcess,
    workdir: Path,
    source: Path,
    records: int,
    *,
    state_url: str,
    name: str,
    pause_on_error: bool = True,
    batch_size: int = 200,
) -> Result:
    config = write_config(
        workdir / "crm-export.toml",
        state_url=state_url,
        org=sandbox.org,
        streams=[Stream("contacts", sqlite_url(source))],
        pause_on_error=pause_on_error,
        batch_size=batch_size,
        log_level="warning",
    )
    before = sandbox.admin.counters()
    started = time.perf_counter()
    done = run_cli("job", "CRMExport", "--config", str(config), env=job_env(SECRET))
    seconds = time.perf_counter() - started
    after = sandbox.admin.counters()
    if done.returncode != 0 or ": completed" not in done.stdout:
        raise SystemExit(
            f"{name}: crm-export failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    mode = "pause" if pause_on_error else "skip"
    note = f"{mode}, batch {batch_size}"
    calls = _collection_calls(after) - _collection_calls(before)
    # The second counters call opened a connection of its own.
    connections = _handshakes(after) - _handshakes(before) - 1
    return Result(name, records, seconds, calls, note, connections)


def _collection_calls(counters: dict[str, Any]) -> int:
    return int(counters["calls"].get("composite_upsert", 0))


def _handshakes(counters: dict[str, Any]) -> int:
    return int(counters["transport"]["tls_handshakes"])


def _check_org(sandbox: SandboxProcess, expected: int, name: str) -> None:
    stored = sandbox.admin.records("Contact")
    ids = {str(r["External_Id__c"]) for r in stored}
    if len(stored) != expected or len(ids) != expected:
        raise SystemExit(
            f"{name}: the org holds {len(stored)} contacts ({len(ids)} distinct), "
            f"expected {expected}"
        )


@contextmanager
def _postgres_state(url: str | None) -> Iterator[str | None]:
    if not url:
        yield None
        return
    with postgres_database(url, f"crm_export_bench_{os.getpid()}") as state_url:
        yield state_url


# (name, state database, pause_on_error, batch_size)
CRM_EXPORT_SCENARIOS: list[tuple[str, str, bool, int]] = [
    ("crm-export, SQLite state", "sqlite", True, 200),
    ("crm-export, SQLite state", "sqlite", False, 200),
    ("crm-export, SQLite state", "sqlite", True, 50),
    ("crm-export, PostgreSQL state", "postgres", True, 200),
    ("crm-export, PostgreSQL state", "postgres", False, 200),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=20, help="added to every org call")
    parser.add_argument(
        "--single-slice", type=int, default=500, help="rows for the one-call-per-record baseline"
    )
    parser.add_argument("--postgres-url", default=os.environ.get(POSTGRES_ENV))
    args = parser.parse_args()

    results: list[Result] = []
    idle_seconds = float("nan")
    single_rows = min(args.single_slice, args.records)
    with tempfile.TemporaryDirectory(prefix="crm-export-bench-") as tmp:
        workdir = Path(tmp)
        source = workdir / "source.db"
        write_contacts(source, contact_rows(range(1, args.records + 1)).rows)
        faults = {"latency_ms": args.latency_ms} if args.latency_ms else None
        with (
            SandboxProcess(workdir, faults=faults) as sandbox,
            _postgres_state(args.postgres_url) as pg_url,
        ):

            def measure(expected: int, run: Callable[[], Result]) -> None:
                sandbox.admin.reset()
                result = run()
                if not result.name.startswith("crm-export"):
                    # The counters call opens a connection of its own.
                    result.connections = _handshakes(sandbox.admin.counters()) - 1
                print(f"measured: {result.name} ({result.note})", file=sys.stderr, flush=True)
                _check_org(sandbox, expected, result.name)
                results.append(result)

            measure(args.records, lambda: raw_collections(sandbox, source, args.records))
            measure(single_rows, lambda: one_call_per_record(sandbox, source, single_rows))
            for n, (name, state, pause, batch) in enumerate(CRM_EXPORT_SCENARIOS):
                if state == "postgres":
                    if pg_url is None:
                        continue
                    state_url = _fresh_pg(pg_url)
                else:
                    state_url = sqlite_url(workdir / f"state-{n}.db")
                measure(
                    args.records,
                    lambda: crm_export_job(
                        sandbox,
                        workdir,
                        source,
                        args.records,
                        state_url=state_url,  # noqa: B023 - called at once, in this iteration
                        name=name,  # noqa: B023
                        pause_on_error=pause,  # noqa: B023
                        batch_size=batch,  # noqa: B023
                    ),
                )
                if n == 0:
                    # The same job again with nothing new: what every run costs regardless.
                    idle_seconds = crm_export_job(
                        sandbox, workdir, source, 0, state_url=state_url, name="idle run"
                    ).seconds

    floor, single = results[0], results[1]
    print(
        f"\nthroughput: {args.records} contacts, sandbox latency {args.latency_ms} ms per call, "
        f"{os.cpu_count()} CPUs\n"
    )
    header = f"{'scenario':34} {'note':18} {'records':>8} {'calls':>6} {'conns':>6} {'seconds':>8} "
    header += f"{'rec/s':>8} {'vs floor':>9} {'vs 1/call':>10} {'steady vs floor':>16}"
    print(header)
    print("-" * len(header))
    for r in results:
        steady = ""
        if r.name.startswith("crm-export") and r.seconds > idle_seconds:
            steady = f"{r.records / (r.seconds - idle_seconds) / floor.rate:16.2f}"
        print(
            f"{r.name:34} {r.note:18} {r.records:8d} {r.calls:6d} {r.connections:6d} "
            f"{r.seconds:8.2f} "
            f"{r.rate:8.0f} {r.rate / floor.rate:9.2f} {r.rate / single.rate:10.1f} {steady}"
        )
    print(
        f"\nfixed cost of a run with nothing to export (process start, login, schema check, "
        f"read): {idle_seconds:.2f} s"
    )
    print(
        "\nconns: TLS connections the scenario opened (the sandbox keeps them alive);"
        "\nvs floor: records/s as a share of the bare collections loop (1.00 = no overhead);"
        "\nvs 1/call: records/s as a multiple of one simple-salesforce upsert per record;"
        "\nsteady vs floor: like vs floor, with the fixed cost of a run taken out."
    )
    return 0


def _fresh_pg(pg_url: str | None) -> str:
    """Empty the bench's PostgreSQL state database and migrate it, as a DBA would once."""
    assert pg_url is not None
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    migrations.upgrade(pg_url)
    return pg_url


if __name__ == "__main__":
    sys.exit(main())
