"""Start-up: what an idle ``crm-export job CRMExport`` costs, against bare interpreters.

    .venv/bin/python bench/startup.py                # 7 runs of each, SQLite state
    .venv/bin/python bench/startup.py --runs 15

An idle run is the daemon's most common run: the state database is up to date and no source
row is pending. The sandbox org runs as its own process. A first job exports a few contacts,
then the same job runs ``--runs`` times with nothing to do; each is timed as a process, as
users run it, and the median is printed against baselines measured in the same run
(``python -c pass``, ``python -c "import sqlalchemy"``, ``crm-export --help``). The org's
counters say what an idle run spends there (logins and API calls). With
$CRM_EXPORT_TEST_POSTGRES_URL set, the idle run is also measured on PostgreSQL state. Last, one
idle run under ``python -X importtime`` lists the modules it loads and the costliest ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The shared harness is the tests package at the repository root (tests/harness.py).
_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from crm_export.store import migrations  # noqa: E402
from tests.harness import (  # noqa: E402
    POSTGRES_ENV,
    SandboxProcess,
    Stream,
    contact_rows,
    crm_export_command,
    job_env,
    postgres_database,
    run_cli,
    sqlite_url,
    write_config,
    write_contacts,
)

SECRET = "sandbox-secret"
GOAL_SECONDS = 0.4


def _median_seconds(command: Sequence[str], runs: int, env: dict[str, str]) -> float:
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return statistics.median(times)


def _calls(counters: dict[str, Any]) -> dict[str, int]:
    """The calls the org served, by endpoint (its admin endpoints are not counted)."""
    return {name: int(n) for name, n in counters["calls"].items()}


@contextmanager
def _postgres_state(url: str | None) -> Iterator[str | None]:
    if not url:
        yield None
        return
    with postgres_database(url, f"crm_export_bench_startup_{os.getpid()}") as state_url:
        migrations.upgrade(state_url)
        yield state_url


def _import_profile(command: Sequence[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """How many modules ``command`` imports, and the packages whose modules cost the most
    (their own import time, summed by top-level package)."""
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    modules = 0
    by_package: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|", 2)
        modules += 1
        package = name.strip().split(".")[0]
        by_package[package] = by_package.get(package, 0) + int(own)
    costliest = sorted(by_package.items(), key=lambda item: -item[1])[:12]
    return modules, [f"{name:28} {micros / 1000:7.1f} ms" for name, micros in costliest]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (median)")
    parser.add_argument("--postgres-url", default=os.environ.get(POSTGRES_ENV))
    args = parser.parse_args()

    env = job_env(SECRET)
    python = sys.executable
    rows: list[tuple[str, float]] = []
    spend: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="crm-export-bench-") as tmp:
        workdir = Path(tmp)
        source = workdir / "source.db"
        write_contacts(source, contact_rows(range(1, 101)).rows)
        with (
            SandboxProcess(workdir) as sandbox,
            _postgres_state(args.postgres_url) as pg_url,
        ):

            def measure(name: str, command: Sequence[str]) -> float:
                seconds = _median_seconds(command, args.runs, env)
                print(f"measured: {name}", file=sys.stderr, flush=True)
                rows.append((name, seconds))
                return seconds

            measure("python -c pass", [python, "-c", "pass"])
            measure("python -c 'import sqlalchemy'", [python, "-c", "import sqlalchemy"])
            measure("crm-export --help", crm_export_command("--help"))

            states: list[tuple[str, str]] = [("SQLite", sqlite_url(workdir / "state.db"))]
            if pg_url is not None:
                states.append(("PostgreSQL", pg_url))
            idle_command: list[str] = []
            for label, state_url in states:
                config = write_config(
                    workdir / f"crm-export-{label}.toml",
                    state_url=state_url,
                    org=sandbox.org,
                    streams=[Stream("contacts", sqlite_url(source))],
                    log_level="warning",
                )
                command = crm_export_command("job", "CRMExport", "--config", str(config))
                first = run_cli(*command[3:], env=env)
                if first.returncode != 0 or "exported 100" not in first.stdout:
                    raise SystemExit(f"the first export failed:\n{first.stdout}{first.stderr}")
                before = _calls(sandbox.admin.counters())
                measure(f"idle job CRMExport, {label} state", command)
                after = _calls(sandbox.admin.counters())
                spend[label] = {
                    name: (n - before.get(name, 0)) / args.runs
                    for name, n in after.items()
                    if n != before.get(name, 0)
                }
                idle_command = idle_command or command
            modules, costliest = _import_profile(idle_command, env)

    bare, alchemy = rows[0][1], rows[1][1]
    print(f"\nstart-up: median of {args.runs} runs each, {os.cpu_count()} CPUs\n")
    header = f"{'command':40} {'seconds':>8} {'vs python':>10} {'vs sqlalchemy':>14}"
    print(header)
    print("-" * len(header))
    for name, seconds in rows:
        print(f"{name:40} {seconds:8.3f} {seconds / bare:10.1f} {seconds / alchemy:14.1f}")
    for label, calls in spend.items():
        told = ", ".join(f"{name} {n:g}" for name, n in sorted(calls.items())) or "none"
        print(f"\nidle run, {label} state: org calls per run: {told}")
    idle = max(seconds for name, seconds in rows if name.startswith("idle"))
    verdict = "met" if idle < GOAL_SECONDS else "NOT met"
    print(f"goal: an idle run under {GOAL_SECONDS} s: {verdict} ({idle:.3f} s, slowest state)")
    print(f"\nan idle run imports {modules} modules; the costliest packages (own import time):")
    for line in costliest:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
