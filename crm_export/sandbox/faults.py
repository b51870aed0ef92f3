"""Fault options and the seeded decisions that inject them.

Every random decision of a kind (``http_503``, ``reset``, ``lock_row``...) draws from
``random.Random(f"{seed}:{kind}:{n}")`` where ``n`` counts that kind's decisions, so the
same sequence of calls against the same seed and options gets the same faults, and
turning one kind on does not shift another kind's draws.
"""

from __future__ import annotations

import copy
import random
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from crm_export.sandbox.org import merge_patch

DEFAULT_DAILY_API_LIMIT = 5_000_000
HTTP_ERROR_STATUSES = frozenset({429, 500, 502, 503, 504})
# Load balancers commonly drop a connection idle for 60 s (AWS ELB's default); Salesforce does
# not document its edge's figure. See docs/sandbox.md, "Connections".
DEFAULT_IDLE_TIMEOUT_SECONDS = 60.0
# 21.0-30.0 were retired in Summer '25; Spring '26 (66.0) is the newest generally available.
DEFAULT_OLDEST_API_VERSION = "31.0"
DEFAULT_NEWEST_API_VERSION = "66.0"
# Bulk API 2.0 cuts a job into internal batches of 10,000 records.
DEFAULT_BULK_BATCH_RECORDS = 10_000
# How fast the org gets through a Bulk job once it is due. Salesforce documents no figure;
# this keeps a 10,000-row job (one internal batch) at 0.1 s, so the suite stays fast while
# jobs still take time. See docs/sandbox.md, "Bulk 2.0 ingest".
DEFAULT_BULK_RECORDS_PER_SECOND = 100_000.0
_VERSION = re.compile(r"\d+\.\d")


class FaultsError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid faults: " + "; ".join(problems))


@dataclass(frozen=True)
class FaultConfig:
    latency_ms: float = 0.0
    http_error_rate: dict[str, float] = field(default_factory=dict)
    reset_rate: float = 0.0
    outage_seconds: float = 0.0
    lock_row_rate: float = 0.0
    daily_api_limit: int = DEFAULT_DAILY_API_LIMIT
    max_concurrent_requests: int = 0
    request_limit_rate: float = 0.0
    token_ttl_seconds: float = 0.0
    token_ttl_calls: int = 0
    bulk_job_seconds: float = 0.0
    bulk_batch_records: int = DEFAULT_BULK_BATCH_RECORDS
    bulk_records_per_second: float = DEFAULT_BULK_RECORDS_PER_SECOND
    paths: str | None = None
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS
    retry_after_seconds: int = 0
    daily_api_overrun: float = 0.1
    api_bursts: int = 0
    oldest_api_version: str = DEFAULT_OLDEST_API_VERSION
    newest_api_version: str = DEFAULT_NEWEST_API_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_RATES = ("reset_rate", "lock_row_rate", "request_limit_rate")
_NON_NEGATIVE = (
    "latency_ms",
    "outage_seconds",
    "token_ttl_seconds",
    "bulk_job_seconds",
    "bulk_records_per_second",
    "idle_timeout_seconds",
    "daily_api_overrun",
)
_COUNTS = (
    "daily_api_limit",
    "max_concurrent_requests",
    "token_ttl_calls",
    "retry_after_seconds",
    "api_bursts",
    "bulk_batch_records",
)
_VERSIONS = ("oldest_api_version", "newest_api_version")


def parse_faults(data: Mapping[str, Any]) -> FaultConfig:
    problems: list[str] = []
    known = set(FaultConfig.__dataclass_fields__)
    for key in data:
        if key not in known:
            problems.append(f"{key}: unknown fault option (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key in _RATES:
        if key in data:
            values[key] = _rate(data[key], key, problems)
    for key in _NON_NEGATIVE:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                problems.append(f"{key}: a number >= 0, got {value!r}")
            else:
                values[key] = float(value)
    for key in _COUNTS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{key}: an integer >= 0, got {value!r}")
            else:
                values[key] = value
    for key in ("daily_api_limit", "bulk_batch_records"):
        if values.get(key) == 0:
            problems.append(f"{key}: must be at least 1")
    if values.get("bulk_records_per_second") == 0:
        problems.append("bulk_records_per_second: must be more than 0 (a job takes time)")
    for key in _VERSIONS:
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not _VERSION.fullmatch(value):
                problems.append(f'{key}: an API version such as "66.0", got {value!r}')
            else:
                values[key] = value
    oldest = float(values.get("oldest_api_version", DEFAULT_OLDEST_API_VERSION))
    newest = float(values.get("newest_api_version", DEFAULT_NEWEST_API_VERSION))
    if oldest > newest:
        problems.append(
            f"oldest_api_version: {oldest:.1f} is newer than newest_api_version {newest:.1f}"
        )
    if "http_error_rate" in data:
        rates = data["http_error_rate"]
        if not isinstance(rates, Mapping):
            problems.append('http_error_rate: a table of status -> rate, e.g. {"503": 0.1}')
        else:
            parsed: dict[str, float] = {}
            for status, rate in rates.items():
                if not (str(status).isdigit() and int(status) in HTTP_ERROR_STATUSES):
                    allowed = ", ".join(str(s) for s in sorted(HTTP_ERROR_STATUSES))
                    problems.append(f"http_error_rate.{status}: status must be one of {allowed}")
                    continue
                parsed[str(int(status))] = _rate(rate, f"http_error_rate.{status}", problems)
            if sum(parsed.values()) > 1:
                problems.append("http_error_rate: the rates add up to more than 1")
            values["http_error_rate"] = parsed
    if data.get("paths") is not None:
        try:
            re.compile(str(data["paths"]))
            values["paths"] = str(data["paths"])
        except re.error as exc:
            problems.append(f"paths: not a valid regular expression: {exc}")
    if problems:
        raise FaultsError(problems)
    return FaultConfig(**values)


def _rate(value: Any, key: str, problems: list[str]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        problems.append(f"{key}: a rate between 0 and 1, got {value!r}")
        return 0.0
    return float(value)


class FaultInjector:
    """The current fault options plus the seeded, counted decisions made from them."""

    def __init__(self, seed: int = 0, config: Mapping[str, Any] | None = None) -> None:
        self.seed = seed
        self._lock = threading.Lock()
        self._draws: dict[str, int] = {}
        self._raw: dict[str, Any] = {}
        self._config = FaultConfig()
        self._outage_until = 0.0
        self.update(config or {})

    @property
    def config(self) -> FaultConfig:
        return self._config

    def update(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Merge ``changes`` (``null`` resets an option); invalid changes change nothing."""
        with self._lock:
            raw = merge_patch(self._raw, changes)
            config = parse_faults(raw)
            self._raw = raw
            self._config = config
            if "outage_seconds" in changes:
                # An outage lasts from the moment it is set.
                self._outage_until = time.monotonic() + config.outage_seconds
            return config

    def replace(self, config: Mapping[str, Any]) -> FaultConfig:
        with self._lock:
            parsed = parse_faults(config)
            self._raw = copy.deepcopy(dict(config))
            self._config = parsed
            self._outage_until = time.monotonic() + parsed.outage_seconds
            return parsed

    def reset_draws(self) -> None:
        with self._lock:
            self._draws.clear()

    def describe(self) -> dict[str, Any]:
        state = self._config.as_dict()
        state["outage_remaining_seconds"] = round(self.outage_remaining(), 3)
        state["seed"] = self.seed
        return state

    def outage_remaining(self) -> float:
        return max(0.0, self._outage_until - time.monotonic())

    def applies_to(self, path: str) -> bool:
        pattern = self._config.paths
        return pattern is None or re.search(pattern, path) is not None

    def draw(self, kind: str, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            n = self._draws.get(kind, 0)
            self._draws[kind] = n + 1
        return random.Random(f"{self.seed}:{kind}:{n}").random() < rate

    def http_error(self) -> int | None:
        """One draw decides whether (and which) 5xx/429 this request gets."""
        rates = self._config.http_error_rate
        if not rates:
            return None
        with self._lock:
            n = self._draws.get("http_error", 0)
            self._draws["http_error"] = n + 1
        roll = random.Random(f"{self.seed}:http_error:{n}").random()
        cumulative = 0.0
        for status in sorted(rates):
            cumulative += rates[status]
            if roll < cumulative:
                return int(status)
        return None
