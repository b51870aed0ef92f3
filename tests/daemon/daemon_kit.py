"""``crm-export run`` as a real process, and what the daemon tests read back from it.

The daemon's JSON log lines (stderr) are written to a file, so a test can poll them for an
event while the daemon keeps running; export_runs, ExportErrors and the sandbox org's own
write log are read the same way. Every wait polls a condition with a generous deadline: the
build machine has two cores and other suites run beside this one.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from crm_export.sandbox.admin_client import AdminClient
from tests.harness import (
    Org,
    Stream,
    crm_export_command,
    job_env,
    sql,
    write_config,
)

SECRET = "sandbox-secret"
# Deadlines are far above what a run needs, so that a loaded machine never fails a test.
DEADLINE = 60.0

T = TypeVar("T")


def write_daemon_config(
    path: Path,
    *,
    state_url: str,
    org: Org,
    streams: Sequence[Stream],
    interval: int = 1,
    cron: str = "0 2 * * *",
    extra: str = "",
    **options: Any,
) -> Path:
    """A harness config plus its [schedule]; written to a temporary file and renamed into
    place, so that the daemon's reload never reads half a file."""
    scratch = path.with_name(path.name + ".new")
    write_config(scratch, state_url=state_url, org=org, streams=streams, **options)
    text = scratch.read_text(encoding="utf-8")
    text += (
        f"\n\n[schedule]\nexport_interval_seconds = {interval}\n"
        f'reexport_cron = "{cron}"\nmisfire_grace_seconds = 600\n{extra}'
    )
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)
    return path


def replace_config_text(path: Path, text: str) -> None:
    scratch = path.with_name(path.name + ".new")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)


def poll(
    condition: Callable[[], T | None],
    what: str,
    timeout: float = DEADLINE,
    interval: float = 0.2,
    context: Callable[[], str] | None = None,
) -> T:
    """The condition's first truthy value; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


class DaemonProcess:
    """``python -m crm_export run --config PATH``, its output in ``log_path``."""

    def __init__(self, config: Path, log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self._out = log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            crm_export_command("run", "--config", str(config)),
            env=dict(env if env is not None else job_env(SECRET)),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )
        self.pid = self.proc.pid

    # -- the log ---------------------------------------------------------------------------

    def text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The JSON log events (optionally only ``name``, with fields equal to ``match``)."""
        out = []
        for line in self.text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written right now
            if name is not None and event.get("event") != name:
                continue
            if all(event.get(k) == v for k, v in match.items()):
                out.append(event)
        return out

    def plain_lines(self) -> list[str]:
        """Lines that are not JSON objects: each one breaks a pipeline parsing the log."""
        out = []
        for line in self.text().splitlines():
            try:
                if isinstance(json.loads(line), dict):
                    continue
            except json.JSONDecodeError:
                pass
            out.append(line)
        return out

    def tail(self, lines: int = 40) -> str:
        return f"--- daemon {self.pid} log (last {lines} lines) ---\n" + "\n".join(
            self.text().splitlines()[-lines:]
        )

    def wait_for_event(
        self, name: str, count: int = 1, timeout: float = DEADLINE, **match: Any
    ) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited with {self.proc.returncode} while waiting for "
                    f"{name}\n{self.tail()}"
                )
            found = self.events(name, **match)
            return found if len(found) >= count else None

        return poll(enough, f"{count} x {name} {match or ''}", timeout, context=self.tail)

    def jobs_finished(self, job: str) -> list[dict[str, Any]]:
        return self.events("job_finished", job=job)

    # -- its life --------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = DEADLINE) -> int:
        """SIGTERM, then the exit code (fails if it does not exit in time)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {timeout} s\n{self.tail()}"
            ) from None

    def close(self) -> None:
        if self.alive():
            self.kill()
        self._out.close()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- what the state database and the org say ----------------------------------------------------


def state_tables_exist(state_url: str) -> bool:
    """Has the daemon set the state database up yet? Asked without creating the file."""
    url = make_url(state_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        return False
    engine = sa.create_engine(state_url)
    try:
        return sa.inspect(engine).has_table("export_runs")
    finally:
        engine.dispose()


def runs(state_url: str, job: str | None = None) -> list[dict[str, Any]]:
    """export_runs rows, oldest first; none while the daemon has not created the table."""
    if not state_tables_exist(state_url):
        return []
    query = "SELECT * FROM export_runs"
    if job is not None:
        query += " WHERE job_id = :job"
    return sql(state_url, query + " ORDER BY id", job=job)


def open_errors(state_url: str) -> dict[str, str]:
    """record_key -> error_code of the open ExportErrors rows."""
    if not state_tables_exist(state_url):
        return {}
    rows = sql(
        state_url, "SELECT record_key, error_code FROM ExportErrors WHERE resolved_at IS NULL"
    )
    return {r["record_key"]: r["error_code"] for r in rows}


def external_ids(admin: AdminClient, sobject: str = "Contact") -> Counter[str]:
    """How many records the org holds per External_Id__c (a count above 1 is a duplicate)."""
    return Counter(str(r.get("External_Id__c")) for r in admin.records(sobject))


def written_keys(admin: AdminClient, since: int = 0) -> list[str]:
    """External ids in the order the org wrote them (created or updated)."""
    return [str(w["external_id"]) for w in admin.writes(since) if w["action"] != "deleted"]


def last_write_seq(admin: AdminClient) -> int:
    writes = admin.writes()
    return int(writes[-1]["seq"]) if writes else 0


@dataclass(frozen=True)
class Interval:
    run_id: int
    stream: str
    runner: str
    started: datetime
    finished: datetime


def overlapping_runs(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Interval, Interval]]:
    """Pairs of finished runs on the same stream whose [started, finished] intervals overlap."""
    by_stream: dict[str, list[Interval]] = {}
    for r in rows:
        if r["finished_at"] is None:
            continue
        by_stream.setdefault(r["stream"], []).append(
            Interval(
                r["id"], r["stream"], r["runner"], as_utc(r["started_at"]), as_utc(r["finished_at"])
            )
        )
    clashes = []
    for intervals in by_stream.values():
        intervals.sort(key=lambda i: i.started)
        for before, after in itertools.pairwise(intervals):
            if after.started < before.finished:
                clashes.append((before, after))
    return clashes


def as_utc(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    # SQLite hands back the stored text: naive, and UTC by the state schema's rule.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
