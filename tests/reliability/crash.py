"""The crash harness: kill the exporter with SIGKILL at random points, restart it, and check
that nothing was lost, nothing duplicated, every rejected record is in ExportErrors, and
export_runs tells the truth about the killed runs.

The sandbox org runs as its own process (``crm-export sandbox serve --data``) with latency on
every call, so it outlives every killed exporter and a kill often lands while a batch is in
flight. The exporter is ``crm-export job ...`` as a process, exactly as a user (or cron) runs
it. Kill points are seeded: most are drawn over the export's progress (the org's count of
records written, plus a little jitter, so a kill lands anywhere in a batch's cycle: sending,
waiting for the org, acknowledging); about a fifth over the first seconds of a process
(start-up, the migration of a new SQLite state database, login).

Phase 1 (skip mode, ``pause_on_error = false``): every ``reject_every``-th row breaks an org
rule; those are logged and skipped.
Phase 2 (pause mode, optional): new rows, a few of them rejected; each pause is fixed in the
source as a person would (order value unchanged) and the exporter goes on, killed meanwhile
with a call in flight, right after the org's rejections, and between pauses. The org must
receive the new rows in source order, each once.
Phase 3 (optional): some of phase 1's rejected rows are fixed in the source, and the daily
re-export (``CRMExport_ExportError``) runs, killed the same way, until one run completes.

After each kill the harness notes how many records the org holds that the state database has
not acknowledged: those are the only ones a later run may send again. The checks then hold
crm-export to every promise in docs/guarantees.md; ``run_crash_harness`` returns a report
whose ``problems`` lists each one broken. ``bench/crash_harness.py`` (full size) and
``tests/reliability/test_crash.py`` (CI size) both call it.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crm_export.sandbox.admin_client import verified_session
from tests.harness import (
    ContactSet,
    SandboxProcess,
    Stream,
    contact_rows,
    crm_export_command,
    job_env,
    postgres_database,
    run_cli,
    split_streams,
    sql,
    sqlite_url,
    write_config,
    write_contacts,
)

SECRET = "sandbox-secret"
# What crm-export writes into export_runs.error of a run it finds left 'running'.
INTERRUPTED_ERROR = "runner stopped before the run finished"

# Where a kill landed, as reported.
BEFORE_RUN = "before its run began (start-up, migrations, lock)"
IN_REQUEST = "mid-run, a request in flight (the org wrote it for a dead exporter)"
BEFORE_ACK = "mid-run, the org had written a batch, not yet acknowledged"
BETWEEN = "mid-run, nothing written and unacknowledged"
AFTER_RUN = "after its run had finished (exit)"


@dataclass
class CrashOptions:
    workdir: Path
    records: int = 20_000
    kills: int = 20
    state: str = "sqlite"  # or "postgres"
    postgres_url: str | None = None  # the server, for state = "postgres"
    seed: int = 1
    latency_ms: int = 30
    batch_size: int = 200
    reject_every: int = 37
    # Phase 2: pause mode on rows added afterwards; 0 skips it.
    pause_records: int = 0
    pause_rejects: int = 3
    pause_kills: int = 4
    # Phase 3: fix this many of phase 1's rejected rows, then run the daily re-export
    # (CRMExport_ExportError) under kills; 0 skips it.
    reexport_fixes: int = 0
    reexport_kills: int = 2
    attempt_timeout: float = 600.0
    # Also time one uninterrupted export of the phase 1 rows (fresh org and state database),
    # the baseline the kills' cost is reported against.
    baseline: bool = False
    log: Callable[[str], None] = print
    # The contacts table as this many streams side by side (tests.harness.split_streams),
    # max_parallel_streams of them at once, each with max_in_flight calls in flight (skip
    # mode). Pause mode (phase 2) keeps its single stream: its order check is the table's.
    streams: int = 1
    max_in_flight: int | None = None  # None: crm-export's default
    # [export] bulk_threshold: 0 (Collections, what the kill plan was sized for), or a
    # backlog size above which phase 1 goes through Bulk API 2.0 jobs; then the sandbox
    # processes bulk_records_per_second, so that kills land while jobs are processing.
    bulk_threshold: int = 0
    bulk_records_per_second: int | None = None


@dataclass
class Kill:
    moment: datetime
    # The org's created count just after the kill, and once it had finished what it was
    # doing: more in the second means a request was in flight.
    created_at_kill: int
    created_settled: int
    # Records in the org that the state database had not acknowledged when the exporter
    # died (the org settled first): what a later run is allowed to send again.
    unacknowledged: int
    landed: str = ""


@dataclass
class Attempt:
    number: int
    phase: int
    plan: str
    exit_code: int | None
    seconds: float
    created_at_end: int
    kill: Kill | None = None
    new_runs: list[int] = field(default_factory=list)
    stdout: str = ""

    @property
    def killed(self) -> bool:
        return self.kill is not None


@dataclass
class CrashReport:
    options: CrashOptions
    attempts: list[Attempt] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def kills(self) -> int:
        return sum(a.killed for a in self.attempts)

    def kills_landed(self, phase: int) -> Counter[str]:
        return Counter(
            a.kill.landed for a in self.attempts if a.kill is not None and a.phase == phase
        )

    def lines(self) -> list[str]:
        o = self.options
        f = self.facts
        out = [
            f"crash harness: state={o.state} records={o.records} seed={o.seed} "
            f"latency={o.latency_ms}ms batch={o.batch_size}",
            f"  exporter processes: {len(self.attempts)}, killed with SIGKILL: {self.kills} "
            f"(phase 1, skip mode: {f.get('phase1_kills')}; phase 2, pause mode: "
            f"{f.get('phase2_kills', 0)}; phase 3, re-export: {f.get('phase3_kills', 0)})",
        ]
        for phase in (1, 2, 3):
            landed = self.kills_landed(phase)
            if landed:
                out.append(f"  phase {phase} kills landed:")
                out += [f"    {n:3d}  {where}" for where, n in landed.most_common()]
        out += [
            f"  source rows the org accepts: {self.accepted}; rows it rejects: {self.rejected}"
            + (
                f" (+{len(f.get('phase2_fixed', []))} rejected in phase 2, then fixed)"
                if o.pause_records
                else ""
            )
            + (
                f" ({f.get('phase3_fixed')} more were rejected in phase 1, then fixed)"
                if o.reexport_fixes
                else ""
            ),
            f"  org: {f.get('contacts')} Contact records, {f.get('distinct_ids')} distinct "
            f"External_Id__c, duplicates: {f.get('duplicates')}, missing: {f.get('missing')}",
            f"  org write log: {f.get('writes')} Contact writes = {f.get('created')} creates + "
            f"{f.get('updated')} resends (updates); kills left {f.get('unacknowledged')} "
            "written records unacknowledged, the only ones allowed to go again",
            f"  ExportErrors: {f.get('open_errors')} open rows == the rejected records: "
            f"{f.get('errors_match')}; {f.get('resolved_errors', 0)} resolved (the fixed ones); "
            f"open rows for records in the org: {f.get('open_but_in_org')}",
            f"  export_runs: {f.get('runs_by_outcome')}",
            f"  phase 1 counters summed over its runs: read {f.get('sum_read')}, exported "
            f"{f.get('sum_exported')}, failed {f.get('sum_failed')} (each row counted once, "
            "when acknowledged, despite the resends)",
        ]
        if o.pause_records:
            out.append(
                f"  phase 2: paused at {f.get('phase2_fixed')}, each fixed in the source; "
                f"first writes in source order: {f.get('phase2_in_order')}"
            )
        if o.reexport_fixes:
            out.append(
                f"  phase 3: {f.get('phase3_fixed')} fixed rows re-exported and resolved; the "
                f"unfixed gained {f.get('reexport_attempts')} attempts == the failures counted "
                "by acknowledged re-export runs"
            )
        phase1 = sum(a.seconds for a in self.attempts if a.phase == 1)
        if "baseline_seconds" in f:
            base = f["baseline_seconds"]
            out.append(
                f"  baseline, the same {o.records} rows exported by one process, never killed: "
                f"{base:.1f}s. Phase 1 under kills: {phase1:.1f}s in its processes = "
                f"{phase1 / base:.2f}x the baseline; org writes per accepted record: "
                f"{f['phase1_writes'] / f['phase1_accepted']:.3f} (baseline 1.000)"
            )
        out.append(f"  time: {self.seconds:.1f}s")
        out.append("  RESULT: " + ("OK" if not self.problems else "FAILED"))
        out += [f"  PROBLEM: {p}" for p in self.problems]
        return out


class _Org:
    """The sandbox's counters over one kept-alive HTTPS connection: the harness polls them
    every few milliseconds, and a TLS handshake per poll would load the machine it measures."""

    def __init__(self, sandbox: SandboxProcess) -> None:
        self.sandbox = sandbox
        self._session = verified_session(sandbox.org.ca_path)
        self._url = f"{sandbox.org.base_url.rstrip('/')}/_sandbox/counters"

    def counters(self) -> dict[str, int]:
        """The org's record counters (created, updated, failed) and ``upserts``: how many
        sObject Collections calls it has received (counted before its latency)."""
        response = self._session.get(self._url, timeout=30)
        response.raise_for_status()
        counters = response.json()
        records: dict[str, int] = counters["records"]
        return {**records, "upserts": int(counters["calls"].get("composite_upsert", 0))}

    def settled(self, quiet: float) -> dict[str, int]:
        """The counters once they have not moved for ``quiet`` seconds: the org has finished
        any request a killed exporter left behind."""
        last = self.counters()
        still_since = time.monotonic()
        deadline = still_since + 60
        while time.monotonic() - still_since < quiet:
            if time.monotonic() > deadline:
                raise CrashCheckFailed("the sandbox org's counters never settled")
            time.sleep(quiet / 5)
            now = self.counters()
            if now != last:
                last, still_since = now, time.monotonic()
        return last

    def close(self) -> None:
        self._session.close()


class CrashCheckFailed(AssertionError):
    pass


_OPEN_ERRORS = "SELECT record_key FROM ExportErrors WHERE resolved_at IS NULL"

# A kill point: ("time", seconds after a process started), or the org's count to wait for:
# ("writes", records written, resends included), ("created", records created), ("failed",
# records rejected) or ("upserts", calls received: the kill lands with that call in flight).
KillPoint = tuple[str, float]


class _Harness:
    def __init__(self, options: CrashOptions, report: CrashReport) -> None:
        self.o = options
        self.report = report
        self.rng = random.Random(options.seed)
        self.dir = options.workdir
        self.source = self.dir / "source.db"
        self.config_path = self.dir / "crm-export.toml"
        self.state_url = ""
        self.sandbox: SandboxProcess | None = None
        self.org: _Org | None = None

    # -- plumbing -------------------------------------------------------------------------

    def write_config(self, pause_on_error: bool) -> None:
        assert self.sandbox is not None
        write_config(
            self.config_path,
            state_url=self.state_url,
            org=self.sandbox.org,
            streams=split_streams(sqlite_url(self.source), self.o.streams),
            pause_on_error=pause_on_error,
            batch_size=self.o.batch_size,
            export_lines=_export_lines(self.o),
        )

    def counters(self) -> dict[str, int]:
        assert self.org is not None
        return self.org.counters()

    def created(self) -> int:
        return self.counters()["created"]

    def count(self, kind: str) -> int:
        """The org's count of ``kind``: created, failed (rejected), upserts (calls received),
        or writes (created or updated, resends included)."""
        counters = self.counters()
        if kind == "writes":
            return counters["created"] + counters["updated"]
        return counters[kind]

    def runs(self) -> dict[int, dict[str, Any]]:
        try:
            rows = sql(
                self.state_url,
                "SELECT id, outcome, error, started_at, finished_at, records_read, "
                "records_exported, records_failed FROM export_runs ORDER BY id",
            )
        except sa.exc.SQLAlchemyError:
            return {}  # no tables yet: every process so far died before migrating
        return {int(r["id"]): r for r in rows}

    def acknowledged_exports(self) -> int:
        """Records the state database says were exported, summed over every run: each
        accepted record is acknowledged once, so this is how many the org should hold."""
        return sum(int(r["records_exported"]) for r in self.runs().values())

    def attempt(self, phase: int, plan: KillPoint | None, job: str = "CRMExport") -> Attempt:
        """Start ``job``; kill it at ``plan`` (None: let it finish)."""
        number = len(self.report.attempts) + 1
        before = set(self.runs())
        log_file = self.dir / f"exporter-{number:03d}.log"
        started = time.monotonic()
        with log_file.open("w", encoding="utf-8") as err:
            proc = subprocess.Popen(
                crm_export_command("job", job, "--config", str(self.config_path), "--wait", "60"),
                env=job_env(SECRET),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
            killed: tuple[datetime, int] | None = None
            try:
                killed = self._watch(proc, plan, started)
                stdout, _ = proc.communicate(timeout=self.o.attempt_timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        seconds = time.monotonic() - started
        kill = None
        if killed is not None:
            assert self.org is not None
            # Let the org finish a request the dead exporter left in flight, then compare.
            created = self.org.settled(quiet=max(0.3, 6 * self.o.latency_ms / 1000))["created"]
            moment, at_kill = killed
            kill = Kill(moment, at_kill, created, created - self.acknowledged_exports())
        runs = self.runs()
        result = Attempt(
            number=number,
            phase=phase,
            plan=_describe(plan),
            exit_code=None if kill is not None else proc.returncode,
            seconds=seconds,
            created_at_end=self.created(),
            kill=kill,
            new_runs=sorted(set(runs) - before),
            stdout=stdout,
        )
        if kill is not None:
            kill.landed = self._landed(kill, [runs[i] for i in result.new_runs])
        self.report.attempts.append(result)
        self.o.log(
            f"  #{number} {result.plan}: "
            + (f"killed, {kill.landed}" if kill else f"exited {proc.returncode}")
            + f"; {seconds:.1f}s, org has {result.created_at_end} records"
        )
        return result

    @staticmethod
    def _landed(kill: Kill, runs: list[dict[str, Any]]) -> str:
        if not runs:
            return BEFORE_RUN
        finished = [_aware(r["finished_at"]) for r in runs if r["outcome"] != "running"]
        # Every run of the process had ended (with streams side by side, one may still run).
        if len(finished) == len(runs) and all(f is not None and f <= kill.moment for f in finished):
            return AFTER_RUN
        if kill.created_settled > kill.created_at_kill:
            return IN_REQUEST
        return BEFORE_ACK if kill.unacknowledged > 0 else BETWEEN

    def _watch(
        self, proc: subprocess.Popen[str], plan: KillPoint | None, started: float
    ) -> tuple[datetime, int] | None:
        """Kill ``proc`` when ``plan`` says: the moment of the kill and the org's created
        count right after it; None if the process ended first."""
        if plan is None:
            return None
        kind, at = plan
        deadline = started + self.o.attempt_timeout
        while proc.poll() is None:
            now = time.monotonic()
            if now > deadline:
                raise CrashCheckFailed(f"exporter still running after {self.o.attempt_timeout}s")
            due = now - started >= at if kind == "time" else self.count(kind) >= at
            if due:
                if kind != "time":
                    # Land anywhere in the batch cycle: the org's answer on its way back,
                    # the acknowledgement, the next read, the next request. A pause-mode run
                    # ends soon after its last write or rejection: less jitter there.
                    spread = {"writes": 2.5, "failed": 1.0, "upserts": 1.0}.get(kind, 0.5)
                    time.sleep(self.rng.uniform(0, spread * self.o.latency_ms / 1000))
                if proc.poll() is not None:
                    return None
                moment = datetime.now(UTC)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return moment, self.created()
            time.sleep(0.005)
        return None

    # -- phase 1: skip mode ---------------------------------------------------------------

    def kill_plan(self, kills: int) -> list[str]:
        """The kinds of ``kills`` kill points in order: about a fifth early in a process
        ("time"), the rest over the export's progress ("writes", made absolute by ``aim``).
        Early ones sit in the first half: later, a process may finish its short remainder."""
        early = max(1, kills // 5) if kills >= 3 else 0
        plan = ["writes"] * (kills - early)
        for _ in range(early):
            plan.insert(self.rng.randrange(len(plan) // 2 + 1), "time")
        return plan

    def aim(self, kind: str, kills_left: int, target: int) -> KillPoint:
        """A kill point: a time in a process's first 1.5 s, or the moment the org has written
        a random share of what is left (``target`` records in all) more records, resends
        included (so a kill may land in the resend after the last one). Spread so that every
        kill lands while there is still work, with the last two batches clear of them."""
        if kind == "time":
            return "time", self.rng.uniform(0.0, 1.5)
        counters = self.counters()
        room = max(1, target - 2 * self.o.batch_size - counters["created"])
        writes = counters["created"] + counters["updated"]
        return "writes", float(writes + self.rng.randint(1, max(1, room // kills_left)))

    def phase1(self, contacts: ContactSet) -> None:
        self.write_config(pause_on_error=False)
        if self.o.state == "postgres":
            # A PostgreSQL state database is migrated by a person, once.
            upgrade = run_cli(
                "db", "upgrade", "--config", str(self.config_path), env=job_env(SECRET)
            )
            if upgrade.returncode != 0:
                raise CrashCheckFailed(f"crm-export db upgrade failed: {upgrade.stderr}")
        plan = self.kill_plan(self.o.kills)
        self.o.log(f"phase 1 (skip mode): {len(contacts.rows)} rows, {len(plan)} kills planned")
        target = len(contacts.accepted)
        for _ in range(3 * self.o.kills + 10):
            if not plan:
                break
            a = self.attempt(1, self.aim(plan[0], len(plan), target))
            if a.kill is not None:
                if a.kill.landed != AFTER_RUN:
                    plan.pop(0)
            elif a.exit_code != 0:
                self.report.problems.append(f"phase 1 run #{a.number} failed: {a.stdout!r}")
                break
            else:
                break  # the export finished first: fewer kills, reported as a problem below
        final = self.attempt(1, None)
        self._expect(final, "completed")
        self.report.facts["phase1_writes"] = self.count("writes")
        self.report.facts["phase1_accepted"] = target
        landed = self.report.kills_landed(1)
        self.report.facts["phase1_kills"] = sum(landed.values())
        during = sum(n for where, n in landed.items() if where != AFTER_RUN)
        if during < self.o.kills:
            self.report.problems.append(
                f"only {during} of {self.o.kills} kills landed before the export was done: "
                "it finished first (raise --latency-ms or --records)"
            )

    # -- phase 2: pause mode --------------------------------------------------------------

    def phase2(self, first_key: int) -> ContactSet:
        """Pause mode on new rows; fix each paused record in the source and go on."""
        o = self.o
        keys = range(first_key, first_key + o.pause_records)
        every = max(2, o.pause_records // (o.pause_rejects + 1))
        contacts = contact_rows(keys, 0)
        for i, row in enumerate(contacts.rows, start=1):
            if i % every == 0 and len(contacts.rejected) < o.pause_rejects:
                row["email"] = f"{row['id']}@example.invalid"
                contacts.rejected[str(row["id"])] = "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        write_contacts(self.source, contacts.rows)
        self.write_config(pause_on_error=True)
        created_before = self.created()
        order = [str(r["id"]) for r in contacts.rows]
        waiting = [k for k in order if k in contacts.rejected]
        # The kills are shared out over the stretches between pauses, so that each pause and
        # each release is crossed by some.
        segments = len(waiting) + 1
        share, extra = divmod(o.pause_kills, segments)
        shares = [share + (i < extra) for i in range(segments)]
        fixed: list[str] = []
        self.o.log(
            f"phase 2 (pause mode): {o.pause_records} new rows, {len(waiting)} rejected, "
            f"{o.pause_kills} kills planned"
        )
        for _ in range(o.pause_kills + 3 * segments + 5):
            segment = len(fixed)
            plan = None
            if shares[segment]:
                # Until the next pause the org creates every row in order, so it holds this
                # many records when the run pauses.
                stop_at = order.index(waiting[segment]) if segment < len(waiting) else len(order)
                plan = self.aim_paused(created_before + stop_at, segment < len(waiting))
            a = self.attempt(2, plan)
            if a.killed:
                shares[segment] -= 1
                continue
            if a.exit_code != 0:
                self.report.problems.append(f"phase 2 run #{a.number} failed: {a.stdout!r}")
                break
            [state] = sql(self.state_url, "SELECT paused_record_key FROM stream_state")
            paused = state["paused_record_key"]
            if paused is None:
                self._expect(a, "completed")
                break
            self._expect(a, "paused")
            if segment >= len(waiting) or paused != waiting[segment]:
                self.report.problems.append(
                    f"run #{a.number} paused at {paused}, not at the next rejected row"
                )
                break
            # A person fixes the row; its order value stays, and so does its place in line.
            with sqlite3.connect(self.source) as db:
                db.execute("UPDATE contacts SET email = 'fixed@acme.test' WHERE id = ?", (paused,))
            db.close()
            fixed.append(paused)
        else:
            self.report.problems.append("phase 2 never completed")
        self.report.facts["phase2_kills"] = sum(self.report.kills_landed(2).values())
        self.report.facts["phase2_fixed"] = fixed
        if fixed != waiting:
            self.report.problems.append(
                f"phase 2 paused at {fixed}, expected each of {waiting} in turn"
            )
        return contacts

    def aim_paused(self, created_at_pause: int, pauses: bool) -> KillPoint:
        """With one of the next calls in flight, right after the org's next rejection
        (between a rolled-back batch and the resend of its prefix, or the pause's
        acknowledgement), or while the records before the next pause go out."""
        counters = self.counters()
        room = created_at_pause - counters["created"]
        kinds = ["upserts"] + (["created"] if room > 1 else []) + (["failed"] if pauses else [])
        kind = self.rng.choice(kinds)
        if kind == "created":
            return kind, float(counters["created"] + self.rng.randint(1, room - 1))
        if kind == "failed":
            return kind, float(counters["failed"] + 1)
        # The next call or the one after: the retry of a released record, the batch the
        # org will reject, or the resend of its prefix.
        return kind, float(counters["upserts"] + self.rng.randint(1, 2))

    # -- phase 3: the daily re-export -----------------------------------------------------

    def phase3(self, phase1: ContactSet) -> list[str]:
        """A person fixes some of phase 1's rejected rows (order values unchanged, so only
        the re-export finds them); CRMExport_ExportError runs, killed meanwhile, until one
        run completes. Returns the fixed keys."""
        o = self.o
        rejected = sorted(phase1.rejected, key=int)
        fixed = self.rng.sample(rejected, min(o.reexport_fixes, len(rejected)))
        with sqlite3.connect(self.source) as db:
            db.executemany(
                "UPDATE contacts SET email = 'c' || id || '@acme.test', last_name = 'Last' || id,"
                " title = NULL WHERE id = ?",
                [(int(k),) for k in fixed],
            )
        db.close()
        self.write_config(pause_on_error=False)
        self.o.log(
            f"phase 3 (CRMExport_ExportError): {len(fixed)} of {len(rejected)} rejected rows "
            f"fixed, {o.reexport_kills} kills planned"
        )
        kills_left = o.reexport_kills
        for _ in range(3 * o.reexport_kills + 5):
            plan = self.aim_reexport(fixed, len(rejected) - len(fixed)) if kills_left else None
            a = self.attempt(3, plan, job="CRMExport_ExportError")
            if a.kill is not None:
                kills_left -= 1
                continue
            self._expect(a, "completed")
            break
        else:
            self.report.problems.append("phase 3 never completed")
        self.report.facts["phase3_kills"] = sum(self.report.kills_landed(3).values())
        self.report.facts["phase3_fixed"] = len(fixed)
        return sorted(fixed, key=int)

    def aim_reexport(self, fixed: list[str], unfixed: int) -> KillPoint:
        """With the next call in flight, while the fixed records not yet resolved are written,
        or while the unfixed ones are rejected again."""
        counters = self.counters()
        still_open = {e["record_key"] for e in sql(self.state_url, _OPEN_ERRORS)}
        waiting = sum(1 for k in fixed if k in still_open)
        kinds = ["upserts"] + (["failed"] if unfixed else []) + (["writes"] if waiting else [])
        kind = self.rng.choice(kinds)
        if kind == "failed":
            return kind, float(counters["failed"] + self.rng.randint(1, unfixed))
        if kind == "writes":
            # Written again, not created, if a killed run left them unacknowledged.
            writes = counters["created"] + counters["updated"]
            return kind, float(writes + self.rng.randint(1, waiting))
        return kind, float(counters["upserts"] + 1)

    def _expect(self, attempt: Attempt, outcome: str) -> None:
        if attempt.exit_code != 0 or f": {outcome}" not in attempt.stdout:
            self.report.problems.append(
                f"run #{attempt.number} should have {outcome}: exit {attempt.exit_code}, "
                f"{attempt.stdout.strip()!r}"
            )

    # -- the checks -----------------------------------------------------------------------

    def check(
        self, phase1: ContactSet, phase2: ContactSet | None, phase3: list[str] | None = None
    ) -> None:
        assert self.sandbox is not None
        facts, problems = self.report.facts, self.report.problems
        accepted = set(phase1.accepted) | (
            {str(r["id"]) for r in phase2.rows} if phase2 is not None else set()
        )
        fixed3 = phase3 or []
        accepted |= set(fixed3)
        rejected = {k: v for k, v in phase1.rejected.items() if k not in fixed3}

        # The org: every accepted record exactly once, nothing else, with its own values.
        records = self.sandbox.admin.records("Contact")
        ids = Counter(str(r["External_Id__c"]) for r in records)
        duplicates = sorted(k for k, n in ids.items() if n > 1)
        missing = sorted(accepted - set(ids), key=int)
        extra = sorted(set(ids) - accepted, key=int)
        facts.update(contacts=len(records), distinct_ids=len(ids), duplicates=len(duplicates))
        facts["missing"] = len(missing)
        if duplicates:
            problems.append(f"{len(duplicates)} external IDs twice in the org: {duplicates[:10]}")
        if missing:
            problems.append(f"{len(missing)} accepted records missing in the org: {missing[:10]}")
        if extra:
            problems.append(f"{len(extra)} records in the org that it rejects: {extra[:10]}")
        wrong = [
            r["External_Id__c"]
            for r in records
            if r["LastName"] != f"Last{r['External_Id__c']}"
            or r["FirstName"] != f"F{r['External_Id__c']}"
        ]
        if wrong:
            problems.append(f"{len(wrong)} org records hold another row's values: {wrong[:10]}")

        # Resends: only what a kill left written but unacknowledged may go twice.
        writes = [w for w in self.sandbox.admin.writes() if w["sobject"] == "Contact"]
        counts = Counter(w["action"] for w in writes)
        unacknowledged = sum(a.kill.unacknowledged for a in self.report.attempts if a.kill)
        facts.update(
            writes=len(writes),
            created=counts["created"],
            updated=counts["updated"],
            unacknowledged=unacknowledged,
        )
        if counts["created"] != len(accepted):
            problems.append(f"the org created {counts['created']} records, not {len(accepted)}")
        if counts["updated"] > unacknowledged:
            problems.append(
                f"the org received {counts['updated']} resends, but kills left only "
                f"{unacknowledged} records written and unacknowledged: acknowledged records "
                "were sent again"
            )
        negative = [a.number for a in self.report.attempts if a.kill and a.kill.unacknowledged < 0]
        if negative:
            problems.append(
                f"after killing #{negative}, the state database acknowledged more exports "
                "than the org holds: a position or a counter ran ahead of the org"
            )

        # ExportErrors: exactly the rejected records, open, once each.
        errors = sql(
            self.state_url,
            "SELECT record_key, error_code, status, attempts, resolved_at FROM ExportErrors",
        )
        open_rows = {e["record_key"]: e for e in errors if e["resolved_at"] is None}
        facts["open_errors"] = len(open_rows)
        facts["errors_match"] = set(open_rows) == set(rejected)
        if len(open_rows) != sum(1 for e in errors if e["resolved_at"] is None):
            problems.append("a record has two open ExportErrors rows")
        if set(open_rows) != set(rejected):
            problems.append(
                "open ExportErrors differ from the rejected records: missing "
                f"{sorted(set(rejected) - set(open_rows), key=int)[:10]}, extra "
                f"{sorted(set(open_rows) - set(rejected), key=int)[:10]}"
            )
        succeeded_open = sorted(set(open_rows) & set(ids), key=int)
        facts["open_but_in_org"] = len(succeeded_open)
        if succeeded_open:
            problems.append(f"open errors for records that succeeded: {succeeded_open[:10]}")
        bad_codes = [k for k, e in open_rows.items() if e["error_code"] != rejected.get(k)]
        if bad_codes:
            problems.append(f"ExportErrors rows with another code than expected: {bad_codes[:10]}")
        # Skip mode sends each row once per acknowledged batch, so a rejection is counted
        # once however many times a kill made the batch go again; each acknowledged
        # re-export adds one attempt, and its run counts one failure.
        reexport_failed = self._sums(3)["failed"]
        extra_attempts = sum(int(e["attempts"]) - 1 for e in open_rows.values())
        facts["reexport_attempts"] = extra_attempts
        if phase3 is None:
            twice = [k for k, e in open_rows.items() if e["attempts"] != 1]
            if twice:
                problems.append(f"rejected records counted more than once (attempts): {twice[:10]}")
        elif extra_attempts != reexport_failed:
            problems.append(
                f"the re-export runs count {reexport_failed} failures, but the open ExportErrors "
                f"rows gained {extra_attempts} attempts"
            )
        resolved = [e for e in errors if e["resolved_at"] is not None]
        facts["resolved_errors"] = len(resolved)
        expected_resolved = sorted([*(phase2.rejected if phase2 is not None else {}), *fixed3])
        if sorted(e["record_key"] for e in resolved) != expected_resolved or any(
            e["status"] != "resolved" for e in resolved
        ):
            problems.append(
                f"resolved ExportErrors {sorted((e['record_key'], e['status']) for e in resolved)}"
                f" != the fixed records {expected_resolved}"
            )

        self._check_runs(phase1, phase2, fixed3)
        if phase2 is not None:
            self._check_order(phase2, writes)

    def _sums(self, phase: int) -> dict[str, int]:
        """A phase's counters summed over its runs."""
        runs = self.runs()
        ids = [i for a in self.report.attempts if a.phase == phase for i in a.new_runs]
        return {
            k: sum(int(runs[i][f"records_{k}"]) for i in ids)
            for k in ("exported", "failed", "read")
        }

    def _check_runs(self, phase1: ContactSet, phase2: ContactSet | None, fixed3: list[str]) -> None:
        facts, problems = self.report.facts, self.report.problems
        runs = self.runs()
        facts["runs_by_outcome"] = dict(Counter(r["outcome"] for r in runs.values()))
        still_running = [i for i, r in runs.items() if r["outcome"] == "running"]
        if still_running:
            problems.append(f"runs left 'running' after the last exporter exited: {still_running}")
        for attempt in self.report.attempts:
            for run_id in attempt.new_runs:
                run = runs[run_id]
                finished = _aware(run["finished_at"])
                if attempt.kill is None:
                    if run["outcome"] not in ("completed", "paused"):
                        problems.append(
                            f"run {run_id} of #{attempt.number}, which was not killed, "
                            f"is {run['outcome']!r}: {run['error']}"
                        )
                elif attempt.kill.landed == AFTER_RUN:
                    if finished is None or finished > attempt.kill.moment:
                        problems.append(f"run {run_id} is said to end after its kill")
                elif (
                    run["outcome"] in ("completed", "paused")
                    and finished is not None
                    and finished <= attempt.kill.moment
                ):
                    pass  # another stream's run, which finished before the kill
                elif run["outcome"] != "interrupted" or run["error"] != INTERRUPTED_ERROR:
                    problems.append(
                        f"run {run_id} was killed at {attempt.kill.moment:%H:%M:%S.%f} while "
                        f"running, yet it is {run['outcome']!r} (finished {finished})"
                    )
                elif finished is None or finished < attempt.kill.moment:
                    problems.append(
                        f"run {run_id} is marked interrupted at {finished}, before it was killed"
                    )

        # Counted when acknowledged, in the same transaction as the position: exactly once.
        p1 = self._sums(1)
        facts.update({f"sum_{k}": v for k, v in p1.items()})
        expected = {
            "exported": len(phase1.accepted),
            "failed": len(phase1.rejected),
            "read": len(phase1.rows),
        }
        for k, n in expected.items():
            if p1[k] != n:
                problems.append(f"phase 1 runs count {p1[k]} records {k}, not {n}")
        exported = {2: len(phase2.rows) if phase2 is not None else 0, 3: len(fixed3)}
        for phase, n in exported.items():
            if self._sums(phase)["exported"] != n:
                problems.append(
                    f"phase {phase} runs count {self._sums(phase)['exported']} records exported,"
                    f" not {n}"
                )

    def _check_order(self, phase2: ContactSet, writes: list[dict[str, Any]]) -> None:
        """Pause mode: nothing after a paused record reached the org before it did, so the
        rows' first writes come exactly in source order."""
        keys = {str(r["id"]) for r in phase2.rows}
        first: list[str] = []
        seen: set[str] = set()
        for w in sorted(writes, key=lambda w: int(w["seq"])):
            key = str(w["external_id"])
            if key in keys and key not in seen:
                seen.add(key)
                first.append(key)
        expected = [str(r["id"]) for r in phase2.rows]
        self.report.facts["phase2_in_order"] = first == expected
        if first != expected:
            at = next(
                (i for i, (a, b) in enumerate(zip(first, expected, strict=False)) if a != b),
                min(len(first), len(expected)),
            )
            self.report.problems.append(
                f"pause mode wrote out of source order from position {at}: "
                f"{first[at : at + 5]} where {expected[at : at + 5]} was due"
            )


def run_crash_harness(options: CrashOptions) -> CrashReport:
    """Run the harness in ``options.workdir``; the report's ``problems`` lists what broke."""
    report = CrashReport(options)
    started = time.monotonic()
    options.workdir.mkdir(parents=True, exist_ok=True)
    harness = _Harness(options, report)
    phase1 = contact_rows(range(1, options.records + 1), options.reject_every)
    report.accepted, report.rejected = len(phase1.accepted), len(phase1.rejected)
    write_contacts(harness.source, phase1.rows)
    with _state_database(options) as state_url:
        harness.state_url = state_url
        with SandboxProcess(
            options.workdir,
            data=options.workdir / "org-records.db",
            faults=_faults(options),
            seed=options.seed,
        ) as sandbox:
            harness.sandbox = sandbox
            harness.org = _Org(sandbox)
            try:
                harness.phase1(phase1)
                if options.streams > 1 and options.pause_records:
                    raise CrashCheckFailed("phase 2 (pause mode) runs with one stream only")
                phase2 = harness.phase2(options.records + 1) if options.pause_records else None
                if phase2 is not None:
                    report.accepted += len(phase2.rows)
                phase3 = harness.phase3(phase1) if options.reexport_fixes else None
                if phase3 is not None:
                    report.accepted += len(phase3)
                    report.rejected -= len(phase3)
                harness.check(phase1, phase2, phase3)
            finally:
                harness.org.close()
    if options.baseline:
        report.facts["baseline_seconds"] = _baseline(options, phase1)
    report.seconds = time.monotonic() - started
    return report


def _baseline(options: CrashOptions, rows: ContactSet) -> float:
    """Seconds one ``crm-export job CRMExport`` takes to export ``rows`` uninterrupted, into
    a fresh org (same latency) and a fresh state database."""
    workdir = options.workdir / "baseline"
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "source.db"
    write_contacts(source, rows.rows)
    env = job_env(SECRET)
    with (
        _state_database(options, "baseline") as state_url,
        SandboxProcess(
            workdir,
            faults=_faults(options),
            seed=options.seed,
        ) as sandbox,
    ):
        config = write_config(
            workdir / "crm-export.toml",
            state_url=state_url,
            org=sandbox.org,
            streams=[Stream("contacts", sqlite_url(source))],
            pause_on_error=False,
            batch_size=options.batch_size,
            # The same path as phase 1 (Bulk or Collections, its calls in flight), one stream.
            export_lines=_export_lines(replace(options, streams=1)),
        )
        if options.state == "postgres":
            run_cli("db", "upgrade", "--config", str(config), env=env)
        started = time.monotonic()
        done = run_cli("job", "CRMExport", "--config", str(config), env=env)
        seconds = time.monotonic() - started
        created = sandbox.admin.counters()["records"]["created"]
        if done.returncode != 0 or created != len(rows.accepted):
            raise CrashCheckFailed(
                f"the baseline export failed: exit {done.returncode}, {created} records in the "
                f"org: {done.stdout}{done.stderr}"
            )
    return seconds


def _export_lines(options: CrashOptions) -> str:
    lines = [f"max_parallel_streams = {options.streams}"] if options.streams > 1 else []
    if options.max_in_flight is not None:
        lines.append(f"max_in_flight = {options.max_in_flight}")
    lines.append(f"bulk_threshold = {options.bulk_threshold}")
    return "\n".join(lines)


def _faults(options: CrashOptions) -> dict[str, int] | None:
    faults = {"latency_ms": options.latency_ms} if options.latency_ms else {}
    if options.bulk_records_per_second:
        faults["bulk_records_per_second"] = options.bulk_records_per_second
    return faults or None


def _describe(plan: KillPoint | None) -> str:
    if plan is None:
        return "run to the end"
    kind, at = plan
    if kind == "time":
        return f"kill {at:.2f}s after start"
    if kind == "created":
        return f"kill once the org has {at:.0f} records"
    if kind == "writes":
        return f"kill at the org's write #{at:.0f}"
    if kind == "upserts":
        return f"kill with the org's upsert call #{at:.0f} in flight"
    return f"kill after the org's rejection #{at:.0f}"


def _aware(moment: datetime | str | None) -> datetime | None:
    """A state database timestamp (SQLite gives naive UTC text) as an aware datetime."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@contextmanager
def _state_database(options: CrashOptions, purpose: str = "crash") -> Iterator[str]:
    """A fresh state database: a SQLite file in the workdir, or a new PostgreSQL database."""
    if options.state == "sqlite":
        yield sqlite_url(options.workdir / f"{purpose}-state.db")
        return
    if options.state != "postgres" or not options.postgres_url:
        raise ValueError("state must be sqlite, or postgres with a postgres_url")
    name = f"crm_export_{purpose}_{os.getpid()}_{options.seed}"
    with postgres_database(options.postgres_url, name) as url:
        yield url
