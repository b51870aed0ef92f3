"""Peak memory of a large export through Collections: flat in the table's size (issue 11 §3).

    .venv/bin/python bench/paged_memory.py                     # 100,000 and 1,000,000 rows
    .venv/bin/python bench/paged_memory.py --sizes 50000 200000

CRMExport reads the source a page (10,000 rows) at a time and holds one page, plus the
batches in flight; nothing it keeps grows with the table. Each size runs ``crm-export job
CRMExport`` as a process (skip mode, the default max_in_flight, SQLite state) into an empty
sandbox org at 0 ms latency, and reads the process's own peak RSS from the kernel
(``wait4``: that child alone, not the sandbox). Printed: wall time, records/s, peak RSS,
and the ratio of each size's peak to the smallest's (goal: flat, <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The shared harness is the tests package at the repository root (tests/harness.py).
_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from tests.harness import (  # noqa: E402
    SandboxProcess,
    Stream,
    contact_rows,
    crm_export_command,
    job_env,
    sqlite_url,
    write_config,
    write_contacts,
)

SECRET = "sandbox-secret"
CHUNK = 100_000  # source rows written per transaction, so the bench itself stays small


def write_source(path: Path, rows: int) -> None:
    for start in range(1, rows + 1, CHUNK):
        write_contacts(path, contact_rows(range(start, min(rows, start + CHUNK - 1) + 1)).rows)


def export(workdir: Path, rows: int) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, the job's summary line) for one export of ``rows``."""
    run_dir = workdir / f"rows-{rows}"
    run_dir.mkdir()
    source = run_dir / "source.db"
    write_source(source, rows)
    with SandboxProcess(run_dir) as sandbox:
        config = write_config(
            run_dir / "crm-export.toml",
            state_url=sqlite_url(run_dir / "state.db"),
            org=sandbox.org,
            streams=[Stream("contacts", sqlite_url(source))],
            pause_on_error=False,
            log_level="warning",
            # The Collections path's reads are what is measured (Bulk: bench/bulk.py).
            export_lines="bulk_threshold = 0",
        )
        started = time.perf_counter()
        proc = subprocess.Popen(
            crm_export_command("job", "CRMExport", "--config", str(config)),
            env=job_env(SECRET),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or ": completed" not in out:
            raise SystemExit(f"{rows} rows: crm-export failed ({proc.returncode}): {out}")
        created = sandbox.admin.counters()["records"]["created"]
        if created != rows:
            raise SystemExit(f"{rows} rows: the org created {created} records")
    # Linux reports ru_maxrss in KiB.
    return seconds, usage.ru_maxrss / 1024, out.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    results: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="crm-export-bench-memory-") as tmp:
        for rows in args.sizes:
            seconds, rss, summary = export(Path(tmp), rows)
            print(
                f"measured: {rows} rows: {seconds:.1f}s, {rss:.0f} MiB; {summary}", file=sys.stderr
            )
            results.append((rows, seconds, rss))
    base = results[0][2]
    print(f"\npaged memory: Collections, skip mode, 0 ms latency, {os.cpu_count()} CPUs\n")
    header = f"{'rows':>10} {'seconds':>8} {'rec/s':>8} {'peak RSS MiB':>13} {'vs first':>9}"
    print(header)
    print("-" * len(header))
    for rows, seconds, rss in results:
        print(f"{rows:10d} {seconds:8.1f} {rows / seconds:8.0f} {rss:13.0f} {rss / base:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
