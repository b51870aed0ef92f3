"""Kill crm-export with SIGKILL at random points until an export completes; check the result.

    .venv/bin/python bench/crash_harness.py --records 20000 --kills 20 --state sqlite
    .venv/bin/python bench/crash_harness.py --records 20000 --kills 20 --state postgres

PostgreSQL state needs a server: --postgres-url, or $CRM_EXPORT_TEST_POSTGRES_URL (a database
is created for the run and dropped after). Exits 1 if any promise is broken. The logic lives
in tests/reliability/crash.py, shared with the CI version (tests/reliability/test_crash.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# The shared harness is the tests package at the repository root (tests/harness.py).
_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from tests.harness import POSTGRES_ENV  # noqa: E402
from tests.reliability.crash import CrashOptions, run_crash_harness  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in phase 1 (skip mode)")
    parser.add_argument("--state", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default=os.environ.get(POSTGRES_ENV))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency-ms", type=int, default=30, help="sandbox latency per call")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--reject-every", type=int, default=37, help="every Nth row is rejected")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=1,
        help="calls in flight in skip mode (default 1, as the kill plan is sized for; with 4 "
        "the export finishes before 20 kills land unless calls are slower)",
    )
    parser.add_argument(
        "--bulk-threshold",
        type=int,
        default=0,
        help="phase 1 through Bulk API 2.0 above this backlog (default 0: Collections)",
    )
    parser.add_argument(
        "--bulk-records-per-second",
        type=int,
        help="how fast the sandbox processes Bulk jobs (slow it down so kills land mid-job)",
    )
    parser.add_argument(
        "--pause-records", type=int, default=1000, help="phase 2 (pause mode) rows; 0 skips it"
    )
    parser.add_argument("--pause-rejects", type=int, default=3)
    parser.add_argument("--pause-kills", type=int, default=5)
    parser.add_argument(
        "--reexport-fixes",
        type=int,
        default=270,
        help="phase 3: rejected rows fixed, then re-exported by CRMExport_ExportError; 0 skips",
    )
    parser.add_argument("--reexport-kills", type=int, default=3)
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip timing one uninterrupted export of the same rows (the ratio's baseline)",
    )
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    args = parser.parse_args()
    if args.state == "postgres" and not args.postgres_url:
        parser.error(f"--state postgres needs --postgres-url or ${POSTGRES_ENV}")

    with tempfile.TemporaryDirectory(prefix="crm-export-crash-") as tmp:
        workdir = args.workdir or Path(tmp)
        report = run_crash_harness(
            CrashOptions(
                workdir=workdir,
                records=args.records,
                kills=args.kills,
                state=args.state,
                postgres_url=args.postgres_url,
                seed=args.seed,
                latency_ms=args.latency_ms,
                batch_size=args.batch_size,
                reject_every=args.reject_every,
                max_in_flight=args.max_in_flight,
                bulk_threshold=args.bulk_threshold,
                bulk_records_per_second=args.bulk_records_per_second,
                pause_records=args.pause_records,
                pause_rejects=args.pause_rejects,
                pause_kills=args.pause_kills,
                reexport_fixes=args.reexport_fixes,
                reexport_kills=args.reexport_kills,
                baseline=not args.no_baseline,
            )
        )
        print("\n".join(report.lines()), flush=True)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
