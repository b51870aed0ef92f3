"""`crm-export run` with `[metrics] listen`: /metrics, /healthz and /readyz as Prometheus and
a container runtime see them (issue 12 §1-§2), from the real daemon against the sandbox org.

One daemon exports two streams: contacts in skip mode (every 40th rejected), leads in pause
mode (paused at its 7th row). The sandbox is slow and answers some upserts with 503, so the
first run lasts seconds and is retried: /metrics is scraped while it runs. Then leads is
taken out of the config, so that nothing more is sent, and the scrape is checked against
the state database and the sandbox org's own counters. A second daemon waits as a standby
(/readyz 503), and becomes ready when the first stops.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.daemon_kit import DaemonProcess, as_utc, poll, runs, write_daemon_config
from tests.harness import SandboxProcess, Stream, contact_rows, sql, sqlite_url, write_contacts

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus-alerts.yml"
METRICS = '\n[metrics]\nlisten = "127.0.0.1:0"\n'


def scrape(base: str) -> tuple[Samples, set[str]]:
    """The samples of one scrape, by (name, sorted labels), and the metric family names."""
    response = requests.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(response.text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def probe(base: str, path: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{base}{path}", timeout=10)
    return response.status_code, response.json()


def config_for(
    path: Path, state_url: str, org: Any, source: Path, *, with_leads: bool = True
) -> Path:
    streams = [Stream("contacts", sqlite_url(source), pause_on_error=False)]
    if with_leads:
        streams.append(Stream("leads", sqlite_url(source), table="leads", pause_on_error=True))
    return write_daemon_config(
        path, state_url=state_url, org=org, streams=streams, batch_size=20, extra=METRICS
    )


def db_sums(state_url: str) -> dict[tuple[str, str], int]:
    """(stream, outcome) -> the records export_runs counted, as the metric names them."""
    totals: dict[tuple[str, str], int] = {}
    for run in runs(state_url):
        for outcome in ("exported", "unchanged", "failed", "paused", "superseded"):
            key = (run["stream"], outcome)
            totals[key] = totals.get(key, 0) + int(run[f"records_{outcome}"])
    return totals


def last_success(state_url: str) -> float:
    [row] = sql(
        state_url,
        "SELECT MAX(finished_at) AS at FROM export_runs "
        "WHERE job_id = 'CRMExport' AND stream = 'contacts' AND outcome = 'completed'",
    )
    return as_utc(row["at"]).timestamp()


def test_metrics_health_and_readiness_of_an_active_daemon_and_a_standby(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    write_contacts(source, contact_rows(range(1, 401), reject_every=40).rows)
    write_contacts(source, contact_rows(range(1, 21), reject_every=7).rows, table="leads")
    state_url = sqlite_url(tmp_path / "state.db")
    faults = {"latency_ms": 150, "http_error_rate": {"503": 0.15}, "paths": "/composite/"}
    with SandboxProcess(tmp_path, faults=faults, seed=3) as sandbox:
        config = config_for(tmp_path / "crm-export.toml", state_url, sandbox.org, source)
        with DaemonProcess(config, tmp_path / "active.log") as active:
            base = active.wait_for_event("metrics_listening")[0]["url"]
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base)

            # -- while the first run goes -------------------------------------------------
            def contacts_running() -> bool:
                return any(
                    r["stream"] == "contacts" and r["outcome"] == "running" and r["records_read"]
                    for r in runs(state_url)
                )

            poll(contacts_running, "the first contacts run under way", context=active.tail)
            during, _ = scrape(base)
            committed = db_sums(state_url)
            exported = value(
                during, "crm_export_records_total", stream="contacts", outcome="exported"
            )
            assert exported is not None and exported <= committed[("contacts", "exported")]
            assert value(during, "crm_export_runner_active") == 1
            assert probe(base, "/readyz") == (
                200,
                {"ok": True, "role": "active", "status": "running", "busy": True},
            )

            # -- leads out of the config: from the next job on, nothing more is sent ------
            active.wait_for_event("job_finished", job="CRMExport")
            config_for(config, state_url, sandbox.org, source, with_leads=False)
            poll(
                lambda: any(
                    e["outcomes"] == {"contacts": "completed"}
                    for e in active.jobs_finished("CRMExport")
                ),
                "a job without leads",
                context=active.tail,
            )
            before = last_success(state_url)
            samples, families = scrape(base)
            after = last_success(state_url)
            scraped_at = time.time()
            counters = sandbox.admin.counters()

            # Counted by the daemon: equal to what export_runs and the org counted.
            for (stream, outcome), total in db_sums(state_url).items():
                got = value(samples, "crm_export_records_total", stream=stream, outcome=outcome)
                assert got == total, (stream, outcome)
            paused_runs = sql(
                state_url, "SELECT COUNT(*) AS n FROM export_runs WHERE stream = 'leads'"
            )[0]["n"]
            labels = {"job": "CRMExport", "stream": "leads", "outcome": "paused"}
            assert value(samples, "crm_export_runs_total", **labels) == paused_runs
            calls = series(samples, "crm_export_salesforce_calls_total")
            upserts = sum(v for k, v in calls.items() if ("kind", "upsert") in k)
            assert upserts == counters["calls"]["composite_upsert"]
            logins = sum(v for k, v in calls.items() if ("kind", "login") in k)
            assert logins == counters["calls"]["token"]
            refused = value(
                samples, "crm_export_salesforce_calls_total", kind="upsert", status="5xx"
            )
            assert refused == counters["faults"]["http_503"] > 0
            assert value(samples, "crm_export_retries_total", error_class="ServerError") == refused
            latency = value(samples, "crm_export_salesforce_call_seconds_count", kind="upsert")
            assert latency == upserts
            used, limit = counters["api_usage"]["used"], counters["api_usage"]["max"]
            assert value(samples, "crm_export_org_api_usage_percent") == 100 * used / limit

            # Read from the state database on the scrape.
            assert value(samples, "crm_export_state_database_up") == 1
            assert value(samples, "crm_export_stream_paused", stream="leads") == 1
            assert value(samples, "crm_export_stream_paused", stream="contacts") == 0
            [pause] = sql(state_url, "SELECT paused_since FROM stream_state WHERE stream = 'leads'")
            age = value(samples, "crm_export_stream_pause_age_seconds", stream="leads")
            assert age is not None
            assert abs(age - (scraped_at - as_utc(pause["paused_since"]).timestamp())) < 5
            assert value(samples, "crm_export_stream_pause_age_seconds", stream="contacts") is None
            open_rows = sql(
                state_url,
                "SELECT stream, error_code, COUNT(*) AS n FROM ExportErrors "
                "WHERE resolved_at IS NULL GROUP BY stream, error_code",
            )
            assert len(open_rows) > 1
            assert series(samples, "crm_export_export_errors_open") == {
                (("code", r["error_code"]), ("stream", r["stream"])): r["n"] for r in open_rows
            }
            success = value(
                samples,
                "crm_export_last_success_timestamp_seconds",
                job="CRMExport",
                stream="contacts",
            )
            assert success is not None and before <= success <= after
            labels = {"job": "CRMExport", "stream": "leads"}
            assert value(samples, "crm_export_last_success_timestamp_seconds", **labels) is None

            # Every metric the example alert rules use is in the scrape.
            rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"][0]["rules"]
            used_names = {m for r in rules for m in re.findall(r"crm_export_[a-z_]+", r["expr"])}
            exposed = {f + "_total" for f in families} | families
            assert used_names <= exposed, used_names - exposed

            # -- a standby --------------------------------------------------------------
            with DaemonProcess(config, tmp_path / "standby.log") as standby:
                standby.wait_for_event("standby")
                spare = standby.wait_for_event("metrics_listening")[0]["url"]
                assert spare != base
                assert probe(spare, "/readyz")[0] == 503
                code, health = probe(spare, "/healthz")
                assert (code, health["role"]) == (200, "standby")
                idle, _ = scrape(spare)
                assert value(idle, "crm_export_runner_active") == 0
                assert not series(idle, "crm_export_stream_paused")  # the active one reports them

                assert active.stop() == 0
                poll(lambda: probe(spare, "/readyz")[0] == 200, "the standby to take over")
                taken_over, _ = scrape(spare)
                assert value(taken_over, "crm_export_runner_active") == 1
                assert value(taken_over, "crm_export_stream_paused", stream="leads") == 1
                assert standby.stop() == 0
            # The HTTP server never writes to the log: every line stays JSON.
            assert active.plain_lines() == [] and standby.plain_lines() == []


def test_a_listen_address_already_taken_stops_the_daemon_at_start(tmp_path: Path) -> None:
    import socket

    import certifi

    from tests.harness import Org

    source = tmp_path / "source.db"
    write_contacts(source, contact_rows(range(1, 3)).rows)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_daemon_config(
            tmp_path / "crm-export.toml",
            state_url=sqlite_url(tmp_path / "state.db"),
            org=Org("https://127.0.0.1:9", certifi.where()),  # never reached
            streams=[Stream("contacts", sqlite_url(source))],
            extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
        )
        with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
            assert daemon.wait() == 1
            [event] = daemon.events("cannot_start")
    assert event["key"] == "metrics.listen" and f"127.0.0.1:{port}" in event["error"]
    assert not (tmp_path / "state.db").exists()  # nothing was started
