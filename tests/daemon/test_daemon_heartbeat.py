"""The daemon's heartbeat carries the running job's counts (issue 12 §1): while CRMExport
works through a slow org, each heartbeat says how far each stream is; between jobs, none."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.daemon.daemon_kit import DaemonProcess, poll, write_daemon_config
from tests.harness import SandboxProcess, Stream, contact_rows, sqlite_url, write_contacts

ROWS = 200


def mid_run(daemon: DaemonProcess) -> Mapping[str, Any] | None:
    for beat in daemon.events("heartbeat", role="active"):
        running = beat.get("running") or {}
        contacts = running.get("streams", {}).get("contacts")
        if contacts and 0 < contacts["done"] < ROWS and "outcome" not in contacts:
            return dict(running)
    return None


def test_the_heartbeat_says_how_far_the_running_job_is(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    write_contacts(source, contact_rows(range(1, ROWS + 1)).rows)
    faults = {"latency_ms": 150, "paths": "/composite/"}
    with SandboxProcess(tmp_path, faults=faults) as sandbox:
        config = write_daemon_config(
            tmp_path / "crm-export.toml",
            state_url=sqlite_url(tmp_path / "state.db"),
            org=sandbox.org,
            streams=[Stream("contacts", sqlite_url(source))],
            batch_size=10,
            interval=1,
        )
        with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
            running = poll(
                lambda: mid_run(daemon), "a heartbeat during the run", context=daemon.tail
            )
            assert running["job"] == "CRMExport"
            contacts = running["streams"]["contacts"]
            assert contacts["total"] == ROWS and contacts["pending"] == ROWS - contacts["done"]
            assert contacts["exported"] == contacts["done"] and contacts["records_per_second"] > 0
            finished = daemon.wait_for_event("job_finished", job="CRMExport")[0]["timestamp"]
            # Later jobs find nothing new: between them the heartbeat has no running job.
            poll(
                lambda: any(
                    b["timestamp"] > finished and b.get("running") is None
                    for b in daemon.events("heartbeat", role="active")
                ),
                "a heartbeat between jobs",
                context=daemon.tail,
            )
            assert daemon.stop() == 0
