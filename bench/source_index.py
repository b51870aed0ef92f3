"""The cost of a source table without the (order_by, key) index the export reads by.

    .venv/bin/python bench/source_index.py                   # 1,000,000 rows
    .venv/bin/python bench/source_index.py --records 100000  # quick

The same SQLite source table of ``--records`` contacts, exported by ``crm-export job
CRMExport`` as a process (as users run it) into an empty sandbox org with no added latency,
twice: with the index on (updated_at, id) that ``crm-export check`` and the run's
``source_index_missing`` warning ask for, which is the baseline, and without it. Each run
starts from a fresh state database and an empty org, and is checked: every record in the
org once. Printed: records/s of each and their ratio (goal: within 1.3x), and whether the run
without the index warned.
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

from tests.harness import (  # noqa: E402
    CONTACTS_INDEX_DDL,
    SandboxProcess,
    Stream,
    contact_rows,
    job_env,
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


def _export(
    sandbox: SandboxProcess, workdir: Path, source: Path, records: int, name: str
) -> Result:
    sandbox.admin.reset()
    state = workdir / f"state-{name.replace(' ', '-')}.db"
    config = write_config(
        workdir / "crm-export.toml",
        state_url=sqlite_url(state),
        org=sandbox.org,
        streams=[Stream("contacts", sqlite_url(source))],
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
    args = parser.parse_args()

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
            base = _export(sandbox, workdir, indexed, args.records, "with the index")
            without = _export(sandbox, workdir, bare, args.records, "without the index")

    print(
        f"\nsource index: {args.records} contacts in a SQLite table, 0 ms sandbox latency, "
        f"{os.cpu_count()} CPUs\n"
    )
    header = f"{'source table':22} {'seconds':>8} {'rec/s':>8} {'vs indexed':>11} {'warned':>7}"
    print(header)
    print("-" * len(header))
    for r in (base, without):
        print(
            f"{r.name:22} {r.seconds:8.1f} {r.rate:8.0f} {base.rate / r.rate:10.2f}x "
            f"{'yes' if r.warned else 'no':>7}"
        )
    ratio = without.seconds / base.seconds
    verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
    print(f"\ngoal: without the index within {GOAL_RATIO}x of with it: {verdict} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
