"""HTTP to Salesforce: the session every call goes through (a timeout on every call, one
trust store loaded once, the environment ignored, one re-send on a kept-alive connection the
server dropped), and what it counts (charged calls apart from logins, the org's usage).
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import certifi
import requests
import structlog
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce
from urllib3.exceptions import ProtocolError, SSLError
from urllib3.util.retry import Retry

from crm_export.errors import (
    SalesforceConfigurationError,
)
from crm_export.ports import ApiUsage

log = structlog.get_logger("crm_export.salesforce")


class HttpSession(requests.Session):
    """A ``requests.Session`` that always has a timeout, ignores the environment, and
    verifies certificates against ``trust``."""

    def __init__(self, timeout: float, trust: ssl.SSLContext, connections: int = 10) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = True
        # ``connections``: as many as calls may be in flight at once, so that each keeps its
        # connection alive (past the pool's size urllib3 opens one more and closes it after).
        self.mount("https://", _TrustAdapter(trust, connections))
        self.timeout = timeout
        self.calls = 0
        # Per thread: several calls may be in flight, each reads its own answer.
        self._here = threading.local()
        # Told of every HTTP exchange: (method, url, seconds, status or None), for metrics.
        self.on_call: Callable[[str, str, float, int | None], None] | None = None

    @property
    def last_response(self) -> requests.Response | None:
        """The answer to the latest request made on the calling thread."""
        response: requests.Response | None = getattr(self._here, "last_response", None)
        return response

    @last_response.setter
    def last_response(self, response: requests.Response | None) -> None:
        self._here.last_response = response

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        self.calls += 1
        self.last_response = None
        response = super().request(method, url, *args, **kwargs)
        self.last_response = response
        return response

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Every exchange on the wire (each redirect too), timed for ``on_call``."""
        if self.on_call is None:
            return super().send(request, **kwargs)
        started = time.monotonic()
        status: int | None = None
        try:
            response = super().send(request, **kwargs)
            status = response.status_code
            return response
        finally:
            try:
                self.on_call(
                    str(request.method), str(request.url), time.monotonic() - started, status
                )
            except Exception:
                log.exception("call_observer_failed")


# What a request meets on a kept-alive connection the server side has forgotten (a load
# balancer's idle timeout): a reset, or an end of stream, before any byte of an answer. A
# reset that lands while the request is still being written surfaces from the TLS layer as
# an EOF in violation of the protocol.
_DROPPED: tuple[type[BaseException], ...] = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)
# requests' own default: every failure is raised at once.
_NO_RETRY = Retry(0, read=False)


def _dropped_before_answer(error: Exception | None) -> bool:
    # urllib3 wraps what http.client raised before the answer's status line as
    # ProtocolError("Connection aborted.", <error>), and a TLS error as SSLError(<error>).
    if not isinstance(error, ProtocolError | SSLError):
        return False
    return any(isinstance(arg, _DROPPED) for arg in error.args)


class _ResendOnDroppedConnection(Retry):
    """Re-send a request once, at once, on a new connection, when the connection it went out
    on was closed under it before any byte of the answer.

    urllib3 already replaces a pooled connection that it can see was closed (readable at end
    of stream) before reusing it. It cannot see one that a load balancer forgot: the request
    goes out and meets a reset. Upserts by external ID are idempotent, so one immediate resend
    is safe; it is not an outage, so it is neither a failed call nor a retry with backoff.
    Every other failure is raised at once, as with requests' default, for the sink's own
    retry policy to decide.
    """

    def __init__(self, **counters: Any) -> None:
        # urllib3 builds each next Retry as type(self)(**counters), the counts decremented.
        settings: dict[str, Any] = {
            "total": 1,
            "connect": 0,
            "read": 1,
            "redirect": 0,
            "status": 0,
            "other": 1,  # urllib3 counts a TLS-level EOF as an "other" error, not a read
            "allowed_methods": None,  # PATCH and POST too: upserts and logins are idempotent
            "backoff_factor": 0,
            "respect_retry_after_header": False,  # the sink's backoff honours Retry-After
            "raise_on_redirect": False,
            "raise_on_status": False,
        }
        super().__init__(**{**settings, **counters})

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if not _dropped_before_answer(error):
            return _NO_RETRY.increment(  # type: ignore[return-value]
                method, url, response, error, _pool, _stacktrace
            )
        log.debug(
            "salesforce_connection_dropped",
            detail="the server closed a kept-alive connection before answering; "
            "re-sending once on a new connection",
            error=repr(error),
        )
        return super().increment(method, url, response, error, _pool, _stacktrace)


class _TrustAdapter(HTTPAdapter):
    """Verifies every connection with one SSLContext, loaded once, and re-sends a request
    once when its kept-alive connection was closed under it (see _ResendOnDroppedConnection).

    Left to itself, requests hands urllib3 the CA file's path, which loads it again for every
    new connection: about 20 ms with the public bundle.
    """

    def __init__(self, trust: ssl.SSLContext, connections: int = 10) -> None:
        self._trust = trust
        super().__init__(
            max_retries=_ResendOnDroppedConnection(),
            pool_connections=connections,
            pool_maxsize=connections,
        )

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._trust
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # Always verify, with the CAs the context holds: a path here would be loaded again.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


class CallKind(Enum):
    API = "api"  # charged against the org's daily API allocation
    LOGIN = "login"  # an OAuth token request: counted apart, never charged
    FREE = "free"  # the versions list (GET /services/data/): no authentication, not charged


def call_kind(url: str) -> CallKind:
    """What Salesforce charges for a request to ``url``.

    OAuth token requests are not charged against the allocation (logins have a login rate
    limit of their own: sforce_api_calls_login.htm; LimitInfoHeader is returned by "all
    calls, except for login()": sforce_api_header_limitinfo.htm; salesforce-api.md D), and
    neither is the versions list, which needs no session. Anything else is counted as
    charged, failed attempts included: over-counting is the safe side of a budget.
    """
    path = urlsplit(url).path
    if path.startswith(("/services/oauth2/", "/services/Soap/u/")):
        return CallKind.LOGIN
    if path.rstrip("/") == "/services/data":
        return CallKind.FREE
    return CallKind.API


def usage_from_header(header: str | None) -> ApiUsage | None:
    """The org's usage from ``Sforce-Limit-Info``, in any of its forms: ``api-usage=N/M``,
    ``api-usage=N/M; api-bursts=B/E``, ``...; per-app-api-usage=...``, in any order.

    simple-salesforce's parser reads ``api-usage`` at the start of the header only, so each
    ``;``-separated part is handed to it on its own; anything it cannot read is ignored.
    """
    if not header:
        return None
    for part in header.split(";"):
        usage = Salesforce.parse_api_usage(part.strip()).get("api-usage")
        if usage is not None and usage.total > 0:
            return ApiUsage(int(usage.used), int(usage.total))
    return None


def usage_from_limits(body: Any) -> ApiUsage | None:
    """``DailyApiRequests`` of a /limits answer (``{"Max": n, "Remaining": n}``)."""
    daily = body.get("DailyApiRequests") if isinstance(body, Mapping) else None
    if not isinstance(daily, Mapping):
        return None
    limit, remaining = daily.get("Max"), daily.get("Remaining")
    if not isinstance(limit, int) or not isinstance(remaining, int) or limit <= 0:
        return None
    return ApiUsage(max(0, limit - remaining), limit)


class CountingSession(HttpSession):
    """An ``HttpSession`` that counts what Salesforce charges apart from logins, and hands
    the usage every answer reports (``Sforce-Limit-Info``, errors included) to ``on_usage``."""

    def __init__(
        self,
        timeout: float,
        trust: ssl.SSLContext,
        on_usage: Callable[[ApiUsage], None],
        connections: int = 10,
    ) -> None:
        super().__init__(timeout, trust, connections)
        self.charged = 0
        self.logins = 0
        self.on_usage = on_usage
        self._count_lock = threading.Lock()
        # The same counts, for the calling thread alone: the calls of one batch in flight,
        # or of one stream's thread, are told apart from those of the others.
        self._counts = threading.local()

    def thread_counts(self) -> tuple[int, int]:
        """(charged calls, logins) made so far on the calling thread."""
        return getattr(self._counts, "charged", 0), getattr(self._counts, "logins", 0)

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kind = call_kind(url.decode() if isinstance(url, bytes) else url)
        here = self._counts
        if kind is CallKind.API:
            with self._count_lock:
                self.charged += 1
            here.charged = getattr(here, "charged", 0) + 1
        elif kind is CallKind.LOGIN:
            with self._count_lock:
                self.logins += 1
            here.logins = getattr(here, "logins", 0) + 1
        response = super().request(method, url, *args, **kwargs)
        usage = usage_from_header(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self.on_usage(usage)
        return response


def trust_store(ca_bundle: Path | None) -> ssl.SSLContext:
    """The public CAs, plus ``ca_bundle`` when one is configured.

    ``ca_bundle`` is an *extra* CA (the sandbox org, a corporate proxy), so it is added to
    the public bundle rather than replacing it.
    """
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle is None:
        return context
    try:
        if ca_bundle.is_dir():
            context.load_verify_locations(capath=str(ca_bundle))
        else:
            context.load_verify_locations(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise SalesforceConfigurationError(
            f"salesforce.ca_bundle {ca_bundle}: not a usable CA certificate file: {exc}"
        ) from exc
    return context
