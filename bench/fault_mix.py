"""The issue's hostile fault mix at full size and full time scale, against a no-fault baseline.

    .venv/bin/python bench/fault_mix.py                      # 20,000 records, both modes
    .venv/bin/python bench/fault_mix.py --mode skip --records 5000 --state postgres

The mix, exactly as issue 5 §3 states it: 10% of calls answer 503, 5% of connections reset,
2% of records hit UNABLE_TO_LOCK_ROW, tokens expire every 30 s, a 60 s outage (started once
a third of the records are in the org), and bursts of REQUEST_LIMIT_EXCEEDED (60% of the
calls for 5 s, at 50% and at 75%). Every call has ``--latency-ms`` of latency.

crm-export runs as users run it (``crm-export job CRMExport`` as a process, over HTTPS to
``crm-export sandbox serve`` in another) with crm-export's **default** ``[retry]``
settings, unless ``--max-attempts`` overrides one. Each mode first exports the same records
with no fault at all (the baseline, same latency), then under the mix, each from an empty
org and a fresh state database, and prints the ratio of the two times, the faults the
sandbox served, and the checks of ``tests/reliability/test_faults.py``: every accepted
record in the org exactly once, ExportErrors exactly the rejected records with their
codes, no transient fault logged as a record error.

Skip mode rejects every 97th record; pause mode rejects only the last one, so the stream
must pause exactly there. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The shared harness is the tests package at the repository root (tests/harness.py).
_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from crm_export.store import migrations  # noqa: E402
from tests.harness import POSTGRES_ENV, postgres_database, sqlite_url  # noqa: E402
from tests.reliability.test_faults import (  # noqa: E402
    FaultMix,
    LimitBurst,
    MixResult,
    check_fault_mix,
    fault_counts,
    run_fault_mix,
)


@contextmanager
def state_database(kind: str, workdir: Path, name: str, server: str | None) -> Iterator[str]:
    if kind == "sqlite":
        url = sqlite_url(workdir / f"{name}-state.db")
        migrations.upgrade(url)
        yield url
        return
    if not server:
        raise SystemExit(f"--state postgres needs --postgres-url or ${POSTGRES_ENV}")
    with postgres_database(server, f"crm_export_bench_faults_{os.getpid()}_{name}") as url:
        migrations.upgrade(url)
        yield url


def run_one(args: argparse.Namespace, workdir: Path, pause: bool, faults: bool) -> MixResult:
    name = f"{'pause' if pause else 'skip'}-{'mix' if faults else 'baseline'}"
    retry = None
    if args.max_attempts is not None:
        retry = {"max_attempts": args.max_attempts}
    with state_database(args.state, workdir, name, args.postgres_url) as url:
        mix = FaultMix(
            workdir / name,
            url,
            records=args.records,
            reject_every=97,
            pause_on_error=pause,
            seed=args.seed,
            latency_ms=args.latency_ms,
            token_ttl_seconds=30,
            outage_seconds=args.outage_seconds,
            outage_at=1 / 3,
            bursts=(LimitBurst(0.5, 5), LimitBurst(0.75, 5)),
            retry=retry,
            timeout_seconds=30,
            run_timeout=args.run_timeout,
            faults=faults,
            log=lambda line: print(f"    {line}", flush=True),
        )
        print(f"  {name}: exporting {args.records:,} records...", flush=True)
        return run_fault_mix(mix)


def report(label: str, result: MixResult, pause: bool) -> list[str]:
    problems = check_fault_mix(result, pause_on_error=pause)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "(no output)"
    print(f"  {label}: {result.seconds:.1f}s, exit {result.exit_code}")
    print(f"    {summary}")
    for problem in problems:
        print(f"    CHECK FAILED: {problem}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--outage-seconds", type=float, default=60)
    parser.add_argument("--mode", choices=["skip", "pause", "both"], default="both")
    parser.add_argument("--state", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default=os.environ.get(POSTGRES_ENV))
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="override [retry] max_attempts (default: crm-export's own default)",
    )
    parser.add_argument("--run-timeout", type=float, default=3600)
    args = parser.parse_args()

    modes = {"skip": [False], "pause": [True], "both": [False, True]}[args.mode]
    failed = False
    with tempfile.TemporaryDirectory(prefix="crm-export-fault-mix-") as tmp:
        workdir = Path(tmp)
        for pause in modes:
            mode = "pause" if pause else "skip"
            print(f"{mode} mode, {args.state} state, {args.latency_ms:g} ms per call", flush=True)
            baseline = run_one(args, workdir, pause, faults=False)
            problems = report("no faults", baseline, pause)
            mixed = run_one(args, workdir, pause, faults=True)
            problems += report("fault mix", mixed, pause)
            ratio = mixed.seconds / baseline.seconds if baseline.seconds else float("nan")
            counts = fault_counts(mixed.counters)
            print(f"  time under the mix / baseline: {ratio:.2f}x")
            print(f"  faults served: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}")
            print(f"  checks: {'all kept' if not problems else f'{len(problems)} FAILED'}")
            failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
