"""What crm-export spends of the org's daily API allocation, against what it must spend.

    .venv/bin/python bench/api_budget.py                   # 10,000 records, 20 ms per call
    .venv/bin/python bench/api_budget.py --records 20000 --fingerprints 1000000

The sandbox org runs as its own process (``--latency-ms`` on every call) and counts every
call it is charged for (``api_usage``) and every login (``token``); crm-export runs as users
run it, ``crm-export job CRMExport`` as a process, on SQLite state and, when
$CRM_EXPORT_TEST_POSTGRES_URL is set, PostgreSQL state. Four measures, each against a
baseline of the same run:

1. a clean export: calls charged per 1,000 records, against the floor of one sObject
   Collections call per 200 records (5.0); logins apart;
2. re-touching 100% of the rows (updated_at bumped, nothing else): upsert calls, and the wall
   time against the first export;
3. the budget line hit mid-run (max_api_usage_percent on the sandbox's daily_api_limit),
   alone and while another integration spends calls at the same time: the calls crm-export
   made past the line (from the org's numbering of the calls it served);
4. the state database's size with fingerprints for ``--fingerprints`` records, against the
   same database without them, and the time of one batch's fingerprint lookup.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The shared harness is the tests package at the repository root (tests/harness.py).
_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

import sqlalchemy as sa  # noqa: E402

from crm_export.ports import BatchAck  # noqa: E402
from crm_export.sandbox.admin_client import verified_session  # noqa: E402
from crm_export.store import SqlStore, migrations  # noqa: E402
from tests.harness import (  # noqa: E402
    POSTGRES_ENV,
    SandboxProcess,
    Stream,
    contact_rows,
    job_env,
    order_value,
    postgres_database,
    run_cli,
    sql,
    sqlite_url,
    write_config,
    write_contacts,
)

SECRET = "sandbox-secret"
BATCH = 200


@dataclass
class Run:
    seconds: float
    charged: int  # calls the org charged (its api_usage counter)
    upserts: int
    logins: int
    stdout: str


class Bench:
    def __init__(self, sandbox: SandboxProcess, workdir: Path) -> None:
        self.sandbox = sandbox
        self.workdir = workdir

    def counters(self) -> tuple[int, int, int]:
        c = self.sandbox.admin.counters()
        calls = c["calls"]
        return int(c["api_usage"]["used"]), calls.get("composite_upsert", 0), calls.get("token", 0)

    def job(self, config: Path, *, expect: str = ": completed") -> Run:
        before = self.counters()
        started = time.perf_counter()
        done = run_cli("job", "CRMExport", "--config", str(config), env=job_env(SECRET))
        seconds = time.perf_counter() - started
        if done.returncode != 0 or expect not in done.stdout:
            raise SystemExit(f"crm-export failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        after = self.counters()
        charged, upserts, logins = (a - b for a, b in zip(after, before, strict=True))
        return Run(seconds, charged, upserts, logins, done.stdout.strip())

    def config(self, state_url: str, source: Path, salesforce_lines: str = "") -> Path:
        path = write_config(
            self.workdir / "crm-export.toml",
            state_url=state_url,
            org=self.sandbox.org,
            streams=[Stream("contacts", sqlite_url(source))],
            log_level="warning",
        )
        if salesforce_lines:
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace("[retry]", f"{salesforce_lines}\n\n[retry]", 1))
        return path

    def spend(self, calls: int, stop: threading.Event | None = None, pause: float = 0.0) -> int:
        """Another integration's calls (GET /limits): charged like any other."""
        org = self.sandbox.org
        with verified_session(org.ca_path) as session:
            token = session.post(
                f"{org.base_url}/services/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(org.client_id, org.client_secret),
                timeout=30,
            ).json()["access_token"]
            made = 0
            while made < calls and not (stop is not None and stop.is_set()):
                session.get(
                    f"{org.base_url}/services/data/v64.0/limits/",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )
                made += 1
                time.sleep(pause)
        return made


def touch_all(source: Path) -> None:
    with sqlite3.connect(source) as db:
        keys = [k for (k,) in db.execute("SELECT id FROM contacts ORDER BY id")]
        db.executemany(
            "UPDATE contacts SET updated_at = ? WHERE id = ?",
            [(order_value(10_000_000 + i), k) for i, k in enumerate(keys)],
        )
    db.close()


def calls_past_the_line(bench: Bench, line: int) -> int:
    """crm-export's upserts the org served when its usage was already at the line: the org
    numbers the calls it serves, so a call numbered above the line came after it."""
    numbers = {w["request"] for w in bench.sandbox.admin.writes() if w.get("request")}
    return sum(1 for n in numbers if n > line)


def budget_scenario(
    bench: Bench, state_url: str, source: Path, *, concurrent: bool
) -> dict[str, float]:
    """10,000 rows need 50 calls; the allocation is 200, the line 50% = 100; others have
    spent 70 before, and (concurrent) keep spending while the export runs."""
    admin = bench.sandbox.admin
    admin.reset()
    admin.set_faults(daily_api_limit=200)
    bench.spend(70)
    config = bench.config(state_url, source, "max_api_usage_percent = 50")
    stop = threading.Event()
    spent = [0]
    # About 10 calls a second: a busy integration, slower than crm-export's own calls.
    spender = threading.Thread(
        target=lambda: spent.__setitem__(0, bench.spend(10**6, stop, pause=0.1))
    )
    if concurrent:
        spender.start()
    try:
        run = bench.job(config, expect=": deferred")
    finally:
        stop.set()
        if concurrent:
            spender.join()
    past = calls_past_the_line(bench, 100)
    again = bench.job(config, expect=": deferred")  # starts over the line: asks /limits
    admin.set_faults(daily_api_limit=5_000_000)
    return {
        "upserts": run.upserts,
        "past": past,
        "others": 70 + spent[0],
        "next_run_calls": again.charged,
        "next_run_upserts": again.upserts,
    }


def clean_and_retouch(bench: Bench, state_url: str, source: Path, records: int) -> dict[str, float]:
    bench.sandbox.admin.reset()
    config = bench.config(state_url, source)
    first = bench.job(config)
    stored = bench.sandbox.admin.records("Contact")
    if len(stored) != records or len({r["External_Id__c"] for r in stored}) != records:
        raise SystemExit(f"the org holds {len(stored)} contacts, expected {records}")
    touch_all(source)
    again = bench.job(config)
    runs = sql(state_url, "SELECT api_calls, logins FROM export_runs ORDER BY id")
    return {
        "calls_per_1000": 1000 * first.charged / records,
        "floor_per_1000": 1000 * -(-records // BATCH) / records,
        "logins": first.logins,
        "runs_api_calls": runs[0]["api_calls"],
        "runs_logins": runs[0]["logins"],
        "first_seconds": first.seconds,
        "retouch_upserts": again.upserts,
        "retouch_charged": again.charged,
        "retouch_seconds": again.seconds,
    }


def fingerprint_size(state_url: str, count: int, *, sqlite_path: Path | None) -> dict[str, float]:
    """Size of the state database with ``count`` fingerprints, against it without them."""

    def size() -> int:
        if sqlite_path is not None:
            engine = sa.create_engine(state_url)
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            engine.dispose()
            return sqlite_path.stat().st_size
        rows = sql(state_url, "SELECT pg_database_size(current_database()) AS n")
        return int(rows[0]["n"])

    migrations.upgrade(state_url)
    empty = size()
    started = time.perf_counter()
    with SqlStore(state_url) as store:
        run = store.begin_run("CRMExport", "contacts")
        step = 10_000
        for start in range(0, count, step):
            keys = range(start + 1, min(count, start + step) + 1)
            prints = {str(k): k.to_bytes(8, "big") * 2 for k in keys}
            store.acknowledge(BatchAck("contacts", run, fingerprints=prints))
        written = time.perf_counter() - started
        lookups = [str(k) for k in range(count // 2, count // 2 + BATCH)]

        def lookup_ms() -> float:
            started = time.perf_counter()
            for _ in range(20):
                found = store.known_fingerprints("contacts", lookups)
            assert len(found) == BATCH
            return (time.perf_counter() - started) / 20 * 1000

        cold = lookup_ms()
        # PostgreSQL plans by statistics that autovacuum gathers within a minute of a table
        # growing; a table filled in seconds and read at once has none yet.
        if sqlite_path is None:
            engine = sa.create_engine(state_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE record_fingerprints")
            engine.dispose()
        analyzed = lookup_ms()
    table = None
    if sqlite_path is None:
        rows = sql(state_url, "SELECT pg_total_relation_size('record_fingerprints') AS n")
        table = int(rows[0]["n"])
    full = size()
    return {
        "empty": empty,
        "full": full,
        "table": float(table if table is not None else full - empty),
        "per_record": (full - empty) / count,
        "write_seconds": written,
        "lookup_ms": analyzed,
        "cold_lookup_ms": cold,
    }


@contextmanager
def pg_state(url: str | None, name: str) -> Iterator[str | None]:
    if not url:
        yield None
        return
    with postgres_database(url, f"crm_export_bench_{name}_{os.getpid()}") as state_url:
        yield state_url


def mb(n: float) -> str:
    return f"{n / 1_000_000:.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=20, help="added to every org call")
    parser.add_argument("--fingerprints", type=int, default=1_000_000)
    parser.add_argument("--postgres-url", default=os.environ.get(POSTGRES_ENV))
    args = parser.parse_args()

    report: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="crm-export-budget-") as tmp:
        workdir = Path(tmp)
        source = workdir / "source.db"
        write_contacts(source, contact_rows(range(1, args.records + 1)).rows)
        faults = {"latency_ms": args.latency_ms} if args.latency_ms else None
        with (
            SandboxProcess(workdir, faults=faults) as sandbox,
            pg_state(args.postgres_url, "export") as pg_url,
        ):
            bench = Bench(sandbox, workdir)
            states = [("SQLite", sqlite_url(workdir / "state.db"))]
            if pg_url:
                migrations.upgrade(pg_url)  # as a DBA would, once
                states.append(("PostgreSQL", pg_url))
            for label, url in states:
                fresh_source = workdir / f"source-{label}.db"
                fresh_source.write_bytes(source.read_bytes())
                print(f"measuring: {label} state, clean export + re-touch", file=sys.stderr)
                report[label] = clean_and_retouch(bench, url, fresh_source, args.records)
            if states:
                budget_source = workdir / "source-budget.db"
                write_contacts(budget_source, contact_rows(range(1, 10_001)).rows)
                for concurrent in (False, True):
                    print(f"measuring: budget line, concurrent={concurrent}", file=sys.stderr)
                    state = sqlite_url(workdir / f"state-budget-{concurrent}.db")
                    result = budget_scenario(bench, state, budget_source, concurrent=concurrent)
                    report[f"budget {'with' if concurrent else 'without'} others"] = result
                    budget_source.unlink()
                    write_contacts(budget_source, contact_rows(range(1, 10_001)).rows)
        sizes: dict[str, dict[str, float]] = {}
        print(f"measuring: {args.fingerprints:,} fingerprints, SQLite", file=sys.stderr)
        path = workdir / "fingerprints.db"
        sizes["SQLite"] = fingerprint_size(sqlite_url(path), args.fingerprints, sqlite_path=path)
        with pg_state(args.postgres_url, "size") as size_url:
            if size_url:
                print(f"measuring: {args.fingerprints:,} fingerprints, PostgreSQL", file=sys.stderr)
                sizes["PostgreSQL"] = fingerprint_size(
                    size_url, args.fingerprints, sqlite_path=None
                )

    print(
        f"\napi budget: {args.records:,} contacts, sandbox latency {args.latency_ms} ms per "
        f"call, {os.cpu_count()} CPUs\n"
    )
    for label in ("SQLite", "PostgreSQL"):
        r = report.get(label)
        if r is None:
            continue
        ratio = r["calls_per_1000"] / r["floor_per_1000"]
        retouch = r["retouch_seconds"] / r["first_seconds"]
        print(f"{label} state")
        print(
            f"  clean export: {r['calls_per_1000']:.2f} calls charged per 1,000 records "
            f"(floor {r['floor_per_1000']:.2f}: ratio {ratio:.2f}); logins {r['logins']:.0f} "
            f"apart (export_runs: api_calls {r['runs_api_calls']:.0f}, "
            f"logins {r['runs_logins']:.0f})"
        )
        print(
            f"  re-touch 100%: {r['retouch_upserts']:.0f} upsert calls, "
            f"{r['retouch_charged']:.0f} charged; {r['retouch_seconds']:.2f} s against "
            f"{r['first_seconds']:.2f} s for the first export = {retouch:.2f}x"
        )
    for name in ("budget without others", "budget with others"):
        b = report.get(name)
        if b is None:
            continue
        print(
            f"{name}: line 100 of 200; crm-export made {b['upserts']:.0f} upserts, "
            f"{b['past']:.0f} past the line; others spent {b['others']:.0f}; the next run "
            f"made {b['next_run_calls']:.0f} call(s) (/limits), {b['next_run_upserts']:.0f} "
            "upserts"
        )
    for label, s in sizes.items():
        print(
            f"{label}: {args.fingerprints:,} fingerprints: database {mb(s['empty'])} -> "
            f"{mb(s['full'])}, table {mb(s['table'])}, {s['per_record']:.1f} bytes per record; "
            f"written in {s['write_seconds']:.1f} s; one batch's lookup ({BATCH} keys) "
            f"{s['lookup_ms']:.2f} ms ({s['cold_lookup_ms']:.2f} ms before the table's "
            "first ANALYZE)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
