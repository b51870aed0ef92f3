"""The sandbox org under a hostile fault mix (issue 5 §3): nothing lost, nothing logged.

The mix is the issue's (503s, connection resets, row locks, expiring tokens, an outage and
bursts of REQUEST_LIMIT_EXCEEDED), time-scaled so that CI stays fast: tokens live a couple
of seconds instead of 30, the outage lasts a few seconds instead of 60. ``crm-export job``
runs as a process against ``crm-export sandbox serve`` in another, over real HTTPS, while
this test steers the outage and the bursts through the admin API as the export progresses.

``run_fault_mix`` and ``check_fault_mix`` are shared with ``bench/fault_mix.py``, which runs
the mix at full size and full time scale.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    ContactSet,
    SandboxProcess,
    contact_rows,
    crm_export_command,
    job_env,
    split_streams,
    sql,
    sqlite_url,
    write_config,
    write_contacts,
)

SECRET = "sandbox-secret"

# Codes and HTTP failures that only ever mean "try again": none may reach ExportErrors.
TRANSIENT_CODES = frozenset(
    {
        "UNABLE_TO_LOCK_ROW",
        "REQUEST_LIMIT_EXCEEDED",
        "INVALID_SESSION_ID",
        "SERVER_UNAVAILABLE",
        "UNKNOWN_EXCEPTION",
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    }
)


@dataclass
class LimitBurst:
    """From the moment ``at`` of the accepted records exist in the org, refuse ``rate`` of the
    data calls with 403 REQUEST_LIMIT_EXCEEDED for ``seconds``."""

    at: float
    seconds: float
    rate: float = 0.6


@dataclass
class FaultMix:
    workdir: Path
    state_url: str
    records: int = 3000
    # Every reject_every-th record breaks an org rule (0: none); in pause mode only the last
    # record is rejected, so that the stream pauses exactly there and nowhere earlier.
    reject_every: int = 97
    pause_on_error: bool = False
    seed: int = 9  # its first 503 and first reset come within a dozen calls
    latency_ms: float = 0
    http_503_rate: float = 0.10
    reset_rate: float = 0.05
    lock_row_rate: float = 0.02
    token_ttl_seconds: float = 2.0
    outage_seconds: float = 4.0
    outage_at: float = 0.3  # fraction of the accepted records in the org when it starts
    bursts: tuple[LimitBurst, ...] = (LimitBurst(0.6, 1.5),)
    batch_size: int = 200
    # None: crm-export's defaults, as a user who configured nothing would have them.
    retry: Mapping[str, float] | None = field(
        default_factory=lambda: {
            "max_attempts": 40,
            "max_elapsed_seconds": 30,
            "initial_backoff_seconds": 0.05,
            "max_backoff_seconds": 1.0,
        }
    )
    record_retry_attempts: int = 5
    timeout_seconds: float = 10
    run_timeout: float = 240
    faults: bool = True  # False: the same run without any fault, as a baseline
    # The contacts table as this many streams side by side (tests.harness.split_streams),
    # with calls in flight in each: max_parallel_streams and max_in_flight.
    streams: int = 1
    max_in_flight: int | None = None  # None: crm-export's default
    log: Callable[[str], None] = lambda _: None


@dataclass
class MixResult:
    contacts: ContactSet
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    counters: dict[str, Any]
    org_keys: Counter[str]
    created: Counter[str]
    errors: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    position_key: str | None
    events: list[str]
    outage_started: float | None = None  # seconds into the run


def mix_contacts(mix: FaultMix) -> ContactSet:
    keys = range(1, mix.records + 1)
    if mix.pause_on_error:
        # contact_rows rejects keys divisible by reject_every: here, the last one only.
        return contact_rows(keys, reject_every=mix.records if mix.reject_every else 0)
    return contact_rows(keys, reject_every=mix.reject_every)


def start_faults(mix: FaultMix) -> dict[str, Any]:
    if not mix.faults:
        return {"latency_ms": mix.latency_ms} if mix.latency_ms else {}
    return {
        "latency_ms": mix.latency_ms,
        "http_error_rate": {"503": mix.http_503_rate},
        "reset_rate": mix.reset_rate,
        "lock_row_rate": mix.lock_row_rate,
        "token_ttl_seconds": mix.token_ttl_seconds,
    }


class MixRig:
    """The source, the sandbox org (its own process) and the config of one fault mix."""

    def __init__(self, mix: FaultMix) -> None:
        self.mix = mix
        mix.workdir.mkdir(parents=True, exist_ok=True)
        self.contacts = mix_contacts(mix)
        source = mix.workdir / "app.db"
        write_contacts(source, self.contacts.rows)
        self.sandbox = SandboxProcess(mix.workdir, faults=start_faults(mix), seed=mix.seed)
        self.config = write_config(
            mix.workdir / "crm-export.toml",
            state_url=mix.state_url,
            org=self.sandbox.org,
            streams=split_streams(sqlite_url(source), mix.streams),
            pause_on_error=mix.pause_on_error,
            batch_size=mix.batch_size,
            timeout_seconds=mix.timeout_seconds,
            export_lines=_export_lines(mix),
            record_retry_attempts=mix.record_retry_attempts,
            # An empty [retry] table leaves crm-export's defaults in force.
            retry=mix.retry if mix.retry is not None else {},
        )
        self.runs = 0

    def __enter__(self) -> MixRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sandbox.stop()

    def run(self, *, steer: bool = True) -> MixResult:
        """``crm-export job CRMExport`` once; ``steer`` starts the outage and the bursts."""
        mix, admin = self.mix, self.sandbox.admin
        self.runs += 1
        events: list[str] = []
        timeline: dict[str, float] = {}
        started = time.monotonic()
        stdout_path = mix.workdir / f"job-{self.runs}.out"
        stderr_path = mix.workdir / f"job-{self.runs}.err"
        with stdout_path.open("w") as out, stderr_path.open("w") as err:
            proc = subprocess.Popen(
                crm_export_command("job", "CRMExport", "--config", str(self.config)),
                env=job_env(SECRET),
                stdout=out,
                stderr=err,
                cwd=mix.workdir,
            )
            try:
                if steer:
                    _steer(mix, proc, admin, len(self.contacts.accepted), started, events, timeline)
                proc.wait(timeout=max(1.0, started + mix.run_timeout - time.monotonic()))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        seconds = time.monotonic() - started
        org_keys = Counter(str(r["External_Id__c"]) for r in admin.records("Contact"))
        created = Counter(
            str(w["external_id"])
            for w in admin.writes()
            if w["sobject"] == "Contact" and w["action"] == "created"
        )
        url = mix.state_url
        errors = sql(url, "SELECT record_key, error_code, status FROM ExportErrors")
        runs = sql(url, "SELECT job_id, stream, outcome, error FROM export_runs ORDER BY id")
        states = sql(url, "SELECT position_key FROM stream_state WHERE stream = 'contacts'")
        return MixResult(
            contacts=self.contacts,
            exit_code=proc.returncode,
            stdout=stdout_path.read_text(encoding="utf-8"),
            stderr=stderr_path.read_text(encoding="utf-8"),
            seconds=seconds,
            counters=admin.counters(),
            org_keys=org_keys,
            created=created,
            errors=errors,
            runs=runs,
            position_key=_position_key(states[0]) if states else None,
            events=events,
            outage_started=timeline.get("outage"),
        )


def _export_lines(mix: FaultMix) -> str:
    lines = [f"max_parallel_streams = {mix.streams}"] if mix.streams > 1 else []
    if mix.max_in_flight is not None:
        lines.append(f"max_in_flight = {mix.max_in_flight}")
    return "\n".join(lines)


def run_fault_mix(mix: FaultMix) -> MixResult:
    """Export ``mix.records`` contacts with ``crm-export job CRMExport`` under the mix."""
    with MixRig(mix) as rig:
        return rig.run()


def _steer(
    mix: FaultMix,
    proc: subprocess.Popen[bytes],
    admin: Any,
    expected: int,
    started: float,
    events: list[str],
    timeline: dict[str, float],
) -> None:
    """Start the outage and the bursts as the export reaches them, until the job ends."""
    outage_done = not mix.faults or mix.outage_seconds <= 0
    bursts = list(mix.bursts) if mix.faults else []
    burst_until: float | None = None
    deadline = started + mix.run_timeout
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"crm-export job still running after {mix.run_timeout:.0f}s")
        if burst_until is not None and now >= burst_until:
            admin.set_faults(request_limit_rate=0)
            events.append(f"{now - started:7.1f}s burst of REQUEST_LIMIT_EXCEEDED ends")
            burst_until = None
        if not outage_done or (bursts and burst_until is None):
            done = admin.counters()["records"]["created"] / max(expected, 1)
            if not outage_done and done >= mix.outage_at:
                admin.set_faults(outage_seconds=mix.outage_seconds)
                timeline["outage"] = now - started
                events.append(
                    f"{now - started:7.1f}s outage of {mix.outage_seconds:g}s starts "
                    f"({done:.0%} of the records in the org)"
                )
                outage_done = True
            if bursts and burst_until is None and done >= bursts[0].at:
                burst = bursts.pop(0)
                admin.set_faults(request_limit_rate=burst.rate)
                burst_until = now + burst.seconds
                events.append(
                    f"{now - started:7.1f}s burst of REQUEST_LIMIT_EXCEEDED "
                    f"({burst.rate:.0%} of calls for {burst.seconds:g}s) starts "
                    f"({done:.0%} of the records in the org)"
                )
        time.sleep(0.05)
    if burst_until is not None:
        admin.set_faults(request_limit_rate=0)
    for line in events:
        mix.log(line)


def _position_key(state: Mapping[str, Any]) -> str | None:
    """The key of the last record the stream's position confirms (stored as tagged JSON)."""
    raw = state.get("position_key")
    return None if raw is None else str(json.loads(raw)["value"])


def check_fault_mix(
    result: MixResult, *, pause_on_error: bool, earlier_runs: tuple[str, ...] = ()
) -> list[str]:
    """Every promise the mix must keep, as a list of the ones broken (empty: all kept).

    ``earlier_runs`` are the outcomes of the runs before the last one, if any.
    """
    problems: list[str] = []
    contacts = result.contacts
    accepted = contacts.accepted
    org = set(result.org_keys)
    if missing := accepted - org:
        problems.append(
            f"{len(missing)} accepted records never reached the org: "
            f"{sorted(missing, key=int)[:10]}"
        )
    if extra := org - accepted:
        problems.append(
            f"{len(extra)} records in the org that it should have rejected: "
            f"{sorted(extra, key=int)[:10]}"
        )
    if twice := {k: n for k, n in result.org_keys.items() if n > 1}:
        problems.append(
            f"{len(twice)} external IDs exist more than once: {dict(list(twice.items())[:10])}"
        )
    if created_twice := {k: n for k, n in result.created.items() if n > 1}:
        problems.append(f"{len(created_twice)} records were created more than once")
    logged = {str(e["record_key"]): str(e["error_code"]) for e in result.errors}
    if transient := {k: c for k, c in logged.items() if c in TRANSIENT_CODES}:
        problems.append(f"transient faults became ExportErrors rows: {transient}")
    if logged != contacts.rejected:
        problems.append(
            f"ExportErrors {dict(sorted(logged.items())[:10])} (of {len(logged)}) is not the "
            f"rejected set {dict(sorted(contacts.rejected.items())[:10])} "
            f"(of {len(contacts.rejected)})"
        )
    # The operator's log: one record_failed event per rejected record, none for a fault.
    failed_events = Counter(
        (str(e.get("key")), str(e.get("code")))
        for e in log_events(result.stderr)
        if e.get("event") == "record_failed"
    )
    if failed_events != Counter(contacts.rejected.items()):
        problems.append(
            f"record_failed log events {dict(list(failed_events.items())[:10])} are not one per "
            "rejected record"
        )
    if open_errors := [e for e in result.errors if e["status"] != "open"]:
        problems.append(f"ExportErrors rows that are not open: {open_errors[:5]}")
    outcomes = [r["outcome"] for r in result.runs]
    want = "paused" if pause_on_error and contacts.rejected else "completed"
    # One run row per stream; streams side by side may start in any order.
    streams = len({r["stream"] for r in result.runs}) or 1
    wanted = [*earlier_runs, *[want] * streams]
    if outcomes[: len(earlier_runs)] != list(earlier_runs) or sorted(
        outcomes[len(earlier_runs) :]
    ) != sorted(wanted[len(earlier_runs) :]):
        problems.append(f"run outcomes {outcomes}, wanted {wanted}: {result.runs}")
    if result.exit_code != 0:
        problems.append(f"crm-export job exited {result.exit_code}: {result.stdout}")
    if not earlier_runs:
        # A batch resent after a reset (the org had already written it) counts once.
        # One summary line per stream, summed.
        counted = re.findall(
            r"exported (\d+) \+ unchanged \d+ \+ failed (\d+) \+ paused (\d+)", result.stdout
        )
        want_counts = (len(accepted), len(contacts.rejected))
        if (
            len(counted) != streams
            or (
                sum(int(c[0]) for c in counted),
                sum(int(c[1]) + int(c[2]) for c in counted),
            )
            != want_counts
        ):
            problems.append(
                f"the summary does not count {want_counts[0]} exported and {want_counts[1]} "
                f"failed: {result.stdout.strip()}"
            )
    return problems


def log_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def fault_counts(counters: Mapping[str, Any]) -> dict[str, int]:
    faults = dict(counters.get("faults", {}))
    faults.pop("latency", None)
    faults["logins"] = int(counters.get("calls", {}).get("token", 0))
    return faults


# -- the tests ---------------------------------------------------------------------------------


def mix_time_bound(mix: FaultMix) -> float:
    """A generous ceiling on the run's duration, from the config rather than from a stopwatch.

    Without faults, this export takes a few seconds. The outage and each burst stall it at
    most for their own length plus one backoff cap; every other fault costs one resend and a
    backoff, at most the cap; and no single request may retry beyond the retry budget.
    """
    assert mix.retry is not None
    cap = mix.retry["max_backoff_seconds"]
    batches = mix.records / mix.batch_size
    stalls = mix.outage_seconds + sum(b.seconds for b in mix.bursts) + cap * (1 + len(mix.bursts))
    # Faulted calls per batch: 503s, resets, 401s and lock-row resends; a handful each.
    per_batch = 1.0 + 6 * cap
    return 20 + stalls + batches * per_batch + mix.retry["max_elapsed_seconds"]


# Pause mode sends allOrNone batches, where one locked record rolls back the whole call: at
# 2% of records nearly every 200-record call meets one. No lock may end in ExportErrors.
@pytest.mark.parametrize("pause_on_error", [False, True], ids=["skip", "pause"])
def test_the_hostile_mix_loses_nothing_and_logs_no_transient_fault(
    state_url: str, tmp_path: Path, pause_on_error: bool
) -> None:
    mix = FaultMix(tmp_path, state_url, pause_on_error=pause_on_error)
    result = run_fault_mix(mix)

    assert check_fault_mix(result, pause_on_error=pause_on_error) == [], result.stdout
    faults = fault_counts(result.counters)
    # The mix really happened: every kind of fault was served at least once.
    for kind in ("http_503", "reset", "lock_row", "token_expired", "outage", "request_limit"):
        assert faults.get(kind, 0) > 0, (kind, faults, result.events)
    assert faults["logins"] > 1, faults
    bound = mix_time_bound(mix)
    assert result.seconds < bound, (result.seconds, bound, faults)
    if pause_on_error:
        [last] = result.contacts.rejected
        assert f"paused at record {last} " in result.stdout, result.stdout


def test_the_hostile_mix_with_streams_side_by_side_and_calls_in_flight(
    state_url: str, tmp_path: Path
) -> None:
    """The same promises with two streams at once (max_parallel_streams = 2), each with four
    calls in flight (skip mode): one org, one state database, one sink shared by both."""
    mix = FaultMix(tmp_path, state_url, streams=2, max_in_flight=4)
    result = run_fault_mix(mix)
    assert check_fault_mix(result, pause_on_error=False) == [], result.stdout
    assert sorted(r["stream"] for r in result.runs) == ["contacts", "contacts_2"]
    faults = fault_counts(result.counters)
    for kind in ("http_503", "reset", "lock_row", "token_expired", "outage", "request_limit"):
        assert faults.get(kind, 0) > 0, (kind, faults, result.events)
    assert result.seconds < mix_time_bound(mix), (result.seconds, faults)


def test_an_outage_past_the_retry_budget_fails_the_run_and_the_next_run_finishes(
    state_url: str, tmp_path: Path
) -> None:
    budget = 3.0
    mix = FaultMix(
        tmp_path,
        state_url,
        records=2000,
        reject_every=0,
        # Only the outage: whatever else failed would muddy what the operator is told.
        http_503_rate=0,
        reset_rate=0,
        lock_row_rate=0,
        token_ttl_seconds=0,
        bursts=(),
        outage_seconds=budget * 4,
        outage_at=0.3,
        retry={
            "max_attempts": 100,
            "max_elapsed_seconds": budget,
            "initial_backoff_seconds": 0.05,
            "max_backoff_seconds": 0.5,
        },
        # Latency keeps the export running long enough for the outage to land mid-way.
        latency_ms=100,
    )
    with MixRig(mix) as rig:
        failed = rig.run()
        # The operator is told the run failed, and why, in words: Salesforce was unavailable.
        assert failed.exit_code == 1, failed.stdout
        summary = failed.stdout.strip()
        assert summary.startswith("CRMExport contacts: failed"), summary
        for words in ("Salesforce was unavailable", "HTTP 503", "retry budget 3s"):
            assert words in summary, summary
        assert "<" not in summary, "the summary shows the raw HTML of the 503 page"
        [run] = failed.runs
        assert run["outcome"] == "failed"
        assert "Salesforce was unavailable" in run["error"]
        # Nothing was logged as a record error, and the position holds: every record up to
        # it is in the org (nothing skipped), and the run stopped short of the end.
        assert failed.errors == []
        assert failed.position_key is not None
        confirmed = {str(k) for k in range(1, int(failed.position_key) + 1)}
        assert confirmed <= set(failed.org_keys)
        assert len(confirmed) < mix.records
        # It gave up once the budget was spent, well before the outage ended.
        assert failed.outage_started is not None
        assert failed.seconds - failed.outage_started < mix.outage_seconds - budget

        deadline = time.monotonic() + mix.outage_seconds + 30
        while rig.sandbox.admin.faults()["outage_remaining_seconds"] > 0:
            assert time.monotonic() < deadline, "the sandbox's outage never ended"
            time.sleep(0.2)
        finished = rig.run(steer=False)

    assert check_fault_mix(finished, pause_on_error=False, earlier_runs=("failed",)) == []
    # The next run starts exactly where the position held.
    assert f"exported {mix.records - len(confirmed)} +" in finished.stdout, finished.stdout
