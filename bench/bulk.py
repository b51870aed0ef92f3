"""Bulk API 2.0 for large backlogs: API calls, wall time and crm-export's peak memory.

    .venv/bin/python bench/bulk.py                        # 100,000 and 1,000,000 rows
    .venv/bin/python bench/bulk.py --sizes 100000 200000  # a smaller machine

The sandbox org runs as its own process at 0 ms latency (keeping records in a --data file,
as a large rehearsal does). For each size, a fresh org, state database and source table
(with an index on (updated_at, id)); crm-export runs as users run it, ``crm-export job
CRMExport`` as a process, in skip mode with the default [export] bulk_* keys, polling
included (the sandbox processes a job on its own clock, bulk_records_per_second at its
default, so the calls counted are what a user's defaults pay). Baseline, in the same run
on the first size's rows: the same job with Bulk off (sObject Collections of 200). Every
scenario is checked: every record in the org once, the run completed.

Printed: API calls per 1,000 records (the org's own count of charged calls, describe
included), wall time, and crm-export's peak RSS (the child's ru_maxrss), with the ratios the
issue asks for: calls against Collections, and peak RSS at the largest size against the
smallest.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from crm_export.store import migrations  # noqa: E402
from tests.harness import (  # noqa: E402
    CONTACTS_DDL,
    SandboxProcess,
    Stream,
    crm_export_command,
    job_env,
    order_value,
    sqlite_url,
    write_config,
)

SECRET = "sandbox-secret"


@dataclass
class Result:
    name: str
    records: int
    seconds: float
    calls: int
    peak_mib: float

    @property
    def per_thousand(self) -> float:
        return self.calls * 1000 / self.records


def write_source(path: Path, records: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute(CONTACTS_DDL.format(name="contacts"))
        chunk = 50_000
        for start in range(1, records + 1, chunk):
            db.executemany(
                "INSERT INTO contacts (id, first_name, last_name, email, title, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (i, f"F{i}", f"Last{i}", f"c{i}@acme.test", None, order_value(i))
                    for i in range(start, min(start + chunk, records + 1))
                ),
            )
        db.execute("CREATE INDEX contacts_order ON contacts (updated_at, id)")
    db.close()


def charged(counters: dict[str, Any]) -> int:
    calls: dict[str, int] = counters["calls"]
    return sum(int(v) for k, v in calls.items() if k not in {"token", "versions"})


def run_job(config: Path, workdir: Path) -> tuple[float, float]:
    """``crm-export job CRMExport`` as a child process: (seconds, peak RSS in MiB)."""
    out = (workdir / "job.log").open("w", encoding="utf-8")
    started = time.perf_counter()
    proc = os.posix_spawn(
        sys.executable,
        [sys.executable, *crm_export_command("job", "CRMExport", "--config", str(config))[1:]],
        job_env(SECRET),
        file_actions=[
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
        ],
    )
    _, status, usage = os.wait4(proc, 0)
    seconds = time.perf_counter() - started
    out.close()
    text = (workdir / "job.log").read_text(encoding="utf-8")
    if os.waitstatus_to_exitcode(status) != 0 or ": completed" not in text:
        raise SystemExit(f"crm-export failed ({status}):\n{text[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def scenario(workdir: Path, records: int, *, bulk: bool) -> Result:
    name = "Bulk API 2.0" if bulk else "Collections (bulk off)"
    workdir.mkdir(parents=True)
    source = workdir / "source.db"
    write_source(source, records)
    state_url = sqlite_url(workdir / "state.db")
    migrations.upgrade(state_url)
    with SandboxProcess(workdir, data=workdir / "org.sqlite") as sandbox:
        config = write_config(
            workdir / "crm-export.toml",
            state_url=state_url,
            org=sandbox.org,
            streams=[Stream("contacts", sqlite_url(source))],
            pause_on_error=False,
            log_level="warning",
        )
        keys = "" if bulk else "bulk_threshold = 0\n"
        text = config.read_text(encoding="utf-8").replace("[export]\n", f"[export]\n{keys}", 1)
        config.write_text(text, encoding="utf-8")
        seconds, peak = run_job(config, workdir)
        counters = sandbox.admin.counters()
        created = int(counters["records"]["created"])
        if created != records:
            raise SystemExit(f"{name}: the org created {created} contacts, expected {records}")
        used_bulk = int(counters["calls"].get("bulk_create", 0)) > 0
        if used_bulk != bulk:
            raise SystemExit(f"{name}: Bulk {'not ' if bulk else ''}used")
    print(f"measured: {name}, {records} rows", file=sys.stderr, flush=True)
    return Result(name, records, seconds, charged(counters), peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="crm-export-bench-bulk-") as tmp:
        workdir = Path(tmp)
        baseline = scenario(workdir / "collections", sizes[0], bulk=False)
        results.append(baseline)
        for size in sizes:
            results.append(scenario(workdir / f"bulk-{size}", size, bulk=True))

    bulk_runs = [r for r in results if r.name.startswith("Bulk")]
    print(f"\nbulk: sandbox latency 0 ms, {os.cpu_count()} CPUs, SQLite state\n")
    header = (
        f"{'scenario':<24} {'records':>9} {'calls':>6} {'calls/1k':>9} "
        f"{'seconds':>8} {'rec/s':>8} {'peak MiB':>9} {'calls vs coll':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        versus = ""
        if r is not baseline and r.records == baseline.records:
            versus = f"{r.calls / baseline.calls:.4f}"
        print(
            f"{r.name:<24} {r.records:>9} {r.calls:>6} {r.per_thousand:>9.3f} "
            f"{r.seconds:>8.1f} {r.records / r.seconds:>8.0f} {r.peak_mib:>9.1f} {versus:>14}"
        )
    first = next(r for r in bulk_runs if r.records == sizes[0])
    print(
        f"\nAPI calls per 1,000 records through Bulk at {first.records} rows: "
        f"{first.per_thousand:.3f} (goal <= 0.1); Collections: {baseline.per_thousand:.3f}"
    )
    if first.records == baseline.records:
        ratio = first.seconds / baseline.seconds
        print(f"Bulk time vs Collections at {first.records} rows: x{ratio:.2f}")
    last = bulk_runs[-1]
    if last is not first:
        print(
            f"peak RSS {last.records} / {first.records} rows: "
            f"{last.peak_mib:.1f} / {first.peak_mib:.1f} MiB = "
            f"{last.peak_mib / first.peak_mib:.2f} (goal <= 1.2, under 200 MB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
