"""The cost of a source table without the (order_by, key) index the export reads by.

    .venv/bin/python bench/source_index.py                   # 1,000,000 rows
    .venv/bin/python bench/source_index.py --records 100000  # quick

The same source table of ``--records`` contacts, exported by ``crm-export job CRMExport`` as
a process (as users run it) into an empty sandbox org with no added latency, twice: with the
index that ``crm-export check`` and the run's ``source_index_missing`` warning ask for, which
is the baseline, and without it. The table is in SQLite and, when
$CRM_EXPORT_TEST_POSTGRES_URL (or ``--postgres-url``) names a server, in PostgreSQL too (a
database created for the run and dropped after). Each run starts from a fresh SQLite state
database and an empty org, and is checked: every record in the org once. Printed:
records/s of each and their ratio (goal: within 1.3x), and whether each run warned.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The shared harness is the tests package at the repository root (tests/harness.py).
_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

import sqlalchemy as sa  # noqa: E402

from crm_export.ports import StreamSource  # noqa: E402
from crm_export.store.indexes import index_statement  # noqa: E402
from tests.harness import (  # noqa: E402
    CONTACTS_DDL,
    CONTACTS_INDEX_DDL,
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

SECRET = "sandbox-secret"
GOAL_RATIO = 1.3
CHUNK = 100_000


@dataclass
class Result:
    name: str
    records: int
    seconds: float
    warned: bool

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else float("inf")


def _write_source(path: Path, records: int) -> None:
    # In chunks: a million rows as dicts at once would measure this script's memory.
    for start in range(1, records + 1, CHUNK):
        stop = min(start + CHUNK, records + 1)
        write_contacts(path, contact_rows(range(start, stop)).rows, index=False)


COLUMNS = ("id", "first_name", "last_name", "email", "title", "updated_at")


def _write_postgres_source(url: str, records: int) -> None:
    """The same contacts in PostgreSQL, loaded with COPY."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(CONTACTS_DDL.format(name="contacts"))
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            copy_sql = f"COPY contacts ({', '.join(COLUMNS)}) FROM STDIN"
            with cursor.copy(copy_sql) as copy:
                for start in range(1, records + 1, CHUNK):
                    for row in contact_rows(range(start, min(start + CHUNK, records + 1))).rows:
                        copy.write_row([row[c] for c in COLUMNS])
            raw.commit()
        finally:
            raw.close()
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE contacts")
    finally:
        engine.dispose()


def _postgres_index(url: str, create: bool) -> None:
    """Create the index the warning asks for (as printed), or drop it."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    source = StreamSource("contacts", "id", "updated_at", (), url, "contacts", None)
    try:
        with engine.connect() as conn:
            if create:
                conn.exec_driver_sql(index_statement(source, conn.dialect))
            else:
                conn.exec_driver_sql("DROP INDEX ix_contacts_updated_at_id")
            conn.exec_driver_sql("ANALYZE contacts")
    finally:
        engine.dispose()


def _export(
    sandbox: SandboxProcess, workdir: Path, source_url: str, records: int, name: str
) -> Result:
    sandbox.admin.reset()
    state = workdir / f"state-{name.replace(' ', '-')}.db"
    config = write_config(
        workdir / "crm-export.toml",
        state_url=sqlite_url(state),
        org=sandbox.org,
        streams=[Stream("contacts", source_url)],
        log_level="warning",
    )
    started = time.perf_counter()
    done = run_cli("job", "CRMExport", "--config", str(config), env=job_env(SECRET), timeout=7200)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or f"exported {records} " not in done.stdout:
        raise SystemExit(f"{name}: crm-export failed ({done.returncode}):\n{done.stdout}")
    stored = int(sandbox.admin.counters()["stored"].get("Contact", 0))
    if stored != records:
        raise SystemExit(f"{name}: the org holds {stored} contacts, expected {records}")
    print(f"measured: {name} ({seconds:.1f} s)", file=sys.stderr, flush=True)
    return Result(name, records, seconds, "source_index_missing" in done.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--postgres-url", default=os.environ.get(POSTGRES_ENV))
    args = parser.parse_args()

    results: list[tuple[str, Result, Result]] = []
    with tempfile.TemporaryDirectory(prefix="crm-export-bench-") as tmp:
        workdir = Path(tmp)
        bare = workdir / "source-without-index.db"
        _write_source(bare, args.records)
        indexed = workdir / "source-with-index.db"
        shutil.copyfile(bare, indexed)
        with sqlite3.connect(indexed) as db:
            db.execute(CONTACTS_INDEX_DDL.format(name="contacts"))
        db.close()
        with SandboxProcess(workdir) as sandbox:
            n = args.records
            base = _export(sandbox, workdir, sqlite_url(indexed), n, "SQLite, with the index")
            without = _export(sandbox, workdir, sqlite_url(bare), n, "SQLite, without it")
            results.append(("SQLite", base, without))
            if args.postgres_url:
                name = f"crm_export_bench_index_{os.getpid()}"
                with postgres_database(args.postgres_url, name) as pg:
                    _write_postgres_source(pg, n)
                    _postgres_index(pg, create=True)
                    base = _export(sandbox, workdir, pg, n, "PostgreSQL, with the index")
                    _postgres_index(pg, create=False)
                    without = _export(sandbox, workdir, pg, n, "PostgreSQL, without it")
                    results.append(("PostgreSQL", base, without))

    print(f"\nsource index: {args.records} contacts, 0 ms sandbox latency, {os.cpu_count()} CPUs\n")
    header = f"{'source table':28} {'seconds':>8} {'rec/s':>8} {'vs indexed':>11} {'warned':>7}"
    print(header)
    print("-" * len(header))
    for _, base, without in results:
        for r in (base, without):
            print(
                f"{r.name:28} {r.seconds:8.1f} {r.rate:8.0f} {r.seconds / base.seconds:10.2f}x "
                f"{'yes' if r.warned else 'no':>7}"
            )
    print()
    for label, base, without in results:
        ratio = without.seconds / base.seconds
        verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
        print(
            f"goal, {label}: without the index within {GOAL_RATIO}x of with it: {verdict} "
            f"({ratio:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
