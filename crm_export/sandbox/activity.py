"""What the sandbox saw: call and fault counters, API usage, connections, the write log and
rejections."""

from __future__ import annotations

import threading
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any

# The logs keep the newest entries only, so a long benchmark cannot exhaust memory;
# the counters stay exact.
LOG_LIMIT = 100_000

# What happened to connections: accepted, TLS handshakes completed, requests served and how
# many of them came on a connection that had served one before, connections dropped for
# idleness, and requests then refused on a dropped connection with a reset.
TRANSPORT_COUNTERS = (
    "connections",
    "tls_handshakes",
    "requests",
    "reused",
    "idle_dropped",
    "idle_resets",
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Activity:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.api_used = 0
            self.calls: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.records: Counter[str] = Counter()
            self.by_sobject: dict[str, Counter[str]] = {}
            self.transport: Counter[str] = Counter()
            self._writes: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
            self._rejections: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
            self._seq = 0
            self._request_seq = 0

    def next_request(self) -> int:
        with self._lock:
            self._request_seq += 1
            return self._request_seq

    def count_call(self, endpoint: str) -> None:
        with self._lock:
            self.calls[endpoint] += 1

    def count_fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def count_transport(self, kind: str) -> None:
        with self._lock:
            self.transport[kind] += 1

    def use_api(self, limit: int, overrun: float = 0.0) -> bool:
        """Count one API call against ``limit``; False (and not counted) once usage has
        reached ``limit`` plus the ``overrun`` share of it that the org tolerates."""
        with self._lock:
            if self.api_used >= limit + int(limit * overrun):
                return False
            self.api_used += 1
            return True

    def record_write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            action = str(entry["action"])
            self.records[action] += 1
            self.by_sobject.setdefault(str(entry["sobject"]), Counter())[action] += 1
            self._writes.append({"seq": self._seq, "time": now_iso(), **entry})

    def record_rejection(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            self.records["failed"] += 1
            self.by_sobject.setdefault(str(entry["sobject"]), Counter())["failed"] += 1
            self._rejections.append({"seq": self._seq, "time": now_iso(), **entry})

    def writes(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._writes if e["seq"] > since]

    def rejections(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._rejections if e["seq"] > since]

    def snapshot(self, api_limit: int) -> dict[str, Any]:
        with self._lock:
            return {
                "api_usage": {"used": self.api_used, "max": api_limit},
                "calls": dict(sorted(self.calls.items())),
                "faults": dict(sorted(self.faults.items())),
                "records": {
                    key: self.records.get(key, 0)
                    for key in ("created", "updated", "deleted", "failed")
                },
                "by_sobject": {
                    name: dict(counts) for name, counts in sorted(self.by_sobject.items())
                },
                "transport": {key: self.transport.get(key, 0) for key in TRANSPORT_COUNTERS},
            }
