"""The Salesforce sink: the one module that speaks HTTP to Salesforce.

Authentication happens here, against ``salesforce.login_url``, so the sandbox org, My Domains
and test orgs all work alike. simple-salesforce then gets ``instance_url`` and ``session_id``
("direct" mode) and our own ``requests.Session``: with a timeout on every call, our CA
settings, and ``trust_env`` off because REQUESTS_CA_BUNDLE would silently override
``verify``. Direct mode also means simple-salesforce never re-logs in by itself (its
SFType path loops forever on a persistent 401, issue #804); we re-authenticate here, bounded.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import certifi
import jwt
import requests
import structlog
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceError
from urllib3.exceptions import ProtocolError, SSLError
from urllib3.util.retry import Retry

from crm_export.budget import ApiBudget
from crm_export.classify import REQUEST_HINTS, request_error_class
from crm_export.config import AUTH_NEEDS, RetryConfig, SalesforceConfig, Secret
from crm_export.errors import (
    ApiBudgetReached,
    NetworkError,
    OrgMismatchError,
    RequestLimitError,
    RequestPayloadError,
    RetriesExhaustedError,
    SalesforceConfigurationError,
    ServerError,
    SessionExpiredError,
    TransientError,
)
from crm_export.ports import ApiUsage, RecordError, SObjectDescribe, UpsertResult
from crm_export.retry import Backoff, Clock, call_with_retries

log = structlog.get_logger("crm_export.salesforce")


class HttpSession(requests.Session):
    """A ``requests.Session`` that always has a timeout, ignores the environment, and
    verifies certificates against ``trust``."""

    def __init__(self, timeout: float, trust: ssl.SSLContext) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = True
        self.mount("https://", _TrustAdapter(trust))
        self.timeout = timeout
        self.calls = 0
        self.last_response: requests.Response | None = None
        # Told of every HTTP exchange: (method, url, seconds, status or None), for metrics.
        self.on_call: Callable[[str, str, float, int | None], None] | None = None

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

    def __init__(self, trust: ssl.SSLContext) -> None:
        self._trust = trust
        super().__init__(max_retries=_ResendOnDroppedConnection())

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
        self, timeout: float, trust: ssl.SSLContext, on_usage: Callable[[ApiUsage], None]
    ) -> None:
        super().__init__(timeout, trust)
        self.charged = 0
        self.logins = 0
        self.on_usage = on_usage

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kind = call_kind(url.decode() if isinstance(url, bytes) else url)
        if kind is CallKind.API:
            self.charged += 1
        elif kind is CallKind.LOGIN:
            self.logins += 1
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


@dataclass(frozen=True)
class Token:
    access_token: str
    instance_url: str


class Authenticator:
    """Gets an access token for the configured auth mode. Never logs a secret."""

    def __init__(self, cfg: SalesforceConfig, session: requests.Session) -> None:
        self.cfg = cfg
        self.session = session

    def login(self) -> Token:
        cfg = self.cfg
        if cfg.auth == "session":
            assert cfg.session_id is not None and cfg.instance_url is not None
            return Token(cfg.session_id.reveal(), cfg.instance_url)
        form: dict[str, str]
        auth: tuple[str, str] | None = None
        if cfg.auth == "client_credentials":
            assert cfg.client_id is not None and cfg.client_secret is not None
            form = {"grant_type": "client_credentials"}
            auth = (cfg.client_id, cfg.client_secret.reveal())
        elif cfg.auth == "password":
            assert cfg.client_id and cfg.client_secret and cfg.username and cfg.password
            form = {
                "grant_type": "password",
                "client_id": cfg.client_id,
                "client_secret": cfg.client_secret.reveal(),
                "username": cfg.username,
                "password": cfg.password.reveal(),
            }
        else:
            assert cfg.client_id and cfg.username and cfg.private_key
            form = {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": self._assertion(),
            }
        url = cfg.login_url.rstrip("/") + "/services/oauth2/token"
        try:
            response = self.session.post(url, data=form, auth=auth)
        except requests.RequestException as exc:
            raise network_error(exc, cfg.login_url) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise ServerError(
                f"login at {cfg.login_url} answered {response.status_code}",
                retry_after=_retry_after(response),
            )
        body = _json(response)
        if response.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            error = body.get("error", response.status_code) if isinstance(body, dict) else "?"
            detail = body.get("error_description", "") if isinstance(body, dict) else ""
            raise SalesforceConfigurationError(
                f"Salesforce login at {cfg.login_url} failed ({cfg.auth}): {error}: {detail}. "
                f"Check {_credential_keys(cfg)}."
            )
        log.info("salesforce_login", login_url=cfg.login_url, instance_url=body["instance_url"])
        return Token(str(body["access_token"]), str(body["instance_url"]))

    def _assertion(self) -> str:
        cfg = self.cfg
        assert cfg.private_key is not None
        claims = {
            "iss": cfg.client_id,
            "sub": cfg.username,
            "aud": jwt_audience(cfg.login_url),
            "exp": int(time.time()) + 180,
        }
        return jwt.encode(claims, cfg.private_key.reveal(), algorithm="RS256")


def _credential_keys(cfg: SalesforceConfig) -> str:
    """The keys this auth mode logs in with (no other), each secret with where it was read."""
    named = []
    for key in AUTH_NEEDS[cfg.auth]:
        value = getattr(cfg, key)
        named.append(
            f"salesforce.{key}" + (f" (from {value.source})" if isinstance(value, Secret) else "")
        )
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]


def jwt_audience(login_url: str) -> str:
    """Salesforce wants login or test.salesforce.com as ``aud``, even behind a My Domain."""
    host = urlsplit(login_url).hostname or ""
    if host == "test.salesforce.com" or host.endswith(".sandbox.my.salesforce.com"):
        return "https://test.salesforce.com"
    if host.endswith("salesforce.com"):
        return "https://login.salesforce.com"
    return login_url.rstrip("/")


class SalesforceSink:
    """Upserts through sObject Collections; request-level failures are retried here."""

    def __init__(
        self,
        cfg: SalesforceConfig,
        retry: RetryConfig,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        on_call: Callable[[str, str, float, int | None], None] | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.rng = rng or random.Random()
        self.backoff = Backoff(
            retry.max_attempts,
            retry.max_elapsed_seconds,
            retry.initial_backoff_seconds,
            retry.max_backoff_seconds,
        )
        self.budget = ApiBudget(cfg.max_api_usage_percent)
        self.session = CountingSession(
            cfg.timeout_seconds, trust_store(cfg.ca_bundle), self.budget.seen
        )
        self.session.on_call = on_call
        # Told the class name of each transient error a request is retried after.
        self.on_retry = on_retry
        self.auth = Authenticator(cfg, self.session)
        self._client: Salesforce | None = None
        self._version_served = False
        # One describe per object for the sink's life (one run): fields change rarely, and
        # a describe costs an API call.
        self._describes: dict[str, SObjectDescribe | None] = {}
        # Whether Salesforce ever answered this sink: until it has, a host that does not
        # resolve or refuses connections is a wrong URL, not an outage to ride out.
        self._reached = False

    @property
    def api_calls(self) -> int:
        return self.session.charged

    @property
    def logins(self) -> int:
        return self.session.logins

    @property
    def api_usage(self) -> ApiUsage | None:
        """As an answer to this sink reported it (a hint from an earlier run is not)."""
        return self.budget.usage if self.budget.fresh else None

    def hint_api_usage(self, usage: ApiUsage) -> None:
        self.budget.hint(usage)

    def read_limits(self) -> ApiUsage | None:
        """GET /limits (one charged call): the org's DailyApiRequests, now."""
        usage = usage_from_limits(self._request("GET", "limits/", None, governed=False))
        if usage is not None:
            self.budget.seen(usage)
        return usage

    def close(self) -> None:
        self.session.close()

    def _login(self) -> Salesforce:
        if self._client is None:
            token = self._token()
            if not self._version_served:
                self._check_api_version(token.instance_url)
            self._client = Salesforce(
                instance_url=token.instance_url,
                session_id=token.access_token,
                session=self.session,
                version=self.cfg.api_version,
            )
        return self._client

    def _check_api_version(self, instance_url: str) -> None:
        """One call to the versions list, which Salesforce neither authenticates nor counts."""
        url = instance_url.rstrip("/") + "/services/data/"
        try:
            response = self.session.get(url)
        except requests.RequestException as exc:
            raise network_error(exc, url) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise ServerError(
                f"the versions list at {url} answered {response.status_code}",
                retry_after=_retry_after(response),
            )
        listed = _json(response)
        served = (
            [str(v.get("version")) for v in listed if isinstance(v, Mapping)]
            if (response.status_code == 200 and isinstance(listed, list))
            else []
        )
        if not served:
            log.warning(
                "salesforce_versions_unreadable",
                url=url,
                status=response.status_code,
                detail="cannot check salesforce.api_version; the calls will tell",
            )
        elif self.cfg.api_version not in served:
            raise OrgMismatchError(
                "salesforce.api_version", _version_problem(self.cfg.api_version, served)
            )
        self._version_served = True

    def upsert(
        self,
        sobject: str,
        external_id_field: str,
        records: Sequence[Mapping[str, Any]],
        *,
        all_or_none: bool,
    ) -> list[UpsertResult]:
        path = f"composite/sobjects/{sobject}/{external_id_field}"
        body = {
            "allOrNone": all_or_none,
            "records": [{"attributes": {"type": sobject}, **r} for r in records],
        }
        data = self._request("PATCH", path, body)
        if not isinstance(data, list):
            raise ServerError(f"unexpected answer to {path}: {str(data)[:200]}")
        return [_upsert_result(item) for item in data]

    def describe(self, sobject: str) -> SObjectDescribe | None:
        key = sobject.casefold()
        if key not in self._describes:
            data = self._request("GET", f"sobjects/{sobject}/describe", None, missing_ok=True)
            self._describes[key] = None if data is None else SObjectDescribe.from_api(data)
        return self._describes[key]

    def query(self, soql: str) -> list[dict[str, Any]]:
        data = self._request("GET", "query", None, params={"q": soql})
        records = list(data.get("records") or ())
        # Salesforce answers up to 2,000 records a page; the rest come by nextRecordsUrl.
        while not data.get("done", True) and data.get("nextRecordsUrl"):
            path = str(data["nextRecordsUrl"]).split(f"/v{self.cfg.api_version}/", 1)[-1]
            data = self._request("GET", path.lstrip("/"), None)
            records += data.get("records") or ()
        return [dict(r) for r in records]

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        params: Mapping[str, str] | None = None,
        missing_ok: bool = False,
        governed: bool = True,
    ) -> Any:
        def attempt() -> Any:
            if governed:
                # Before every charged call, retries included: at most one call past the line.
                self.budget.before_call(self.read_limits)
            # A token can expire between any two calls; a fresh one fixes that, but a 401
            # that survives several fresh tokens is a person's problem, not a retry's.
            for _ in range(self.cfg.max_reauth + 1):
                try:
                    return self._call(method, path, body, params, missing_ok)
                except SessionExpiredError:
                    log.info("salesforce_session_expired", detail="re-authenticating")
                    self._client = None
            raise SalesforceConfigurationError(
                f"401 INVALID_SESSION_ID persisted after {self.cfg.max_reauth} fresh logins: "
                "the integration user's session is refused (check its profile, IP "
                "restrictions and the connected app's policies)"
            )

        try:
            return call_with_retries(attempt, self.backoff, self.clock, self.rng, self._on_retry)
        except RetriesExhaustedError as exc:
            raise RetriesExhaustedError(
                f"{_what_failed(exc.__cause__)}; {str(exc).rstrip('.')}. Nothing was skipped: "
                "the next run resumes where this one stopped.",
                retry_after=exc.retry_after,
            ) from exc.__cause__

    def _call(
        self,
        method: str,
        path: str,
        body: Any,
        params: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> Any:
        try:
            result = self._login().restful(
                path, params=dict(params) if params else None, method=method, json=body
            )
        except SalesforceError as exc:
            self._reached = True
            if missing_ok and exc.status == 404:
                return None
            raise self._translate(exc) from exc
        except requests.RequestException as exc:
            if self.cfg.auth == "session":  # no login: this was the first call to the org
                self._fail_fast(exc, "salesforce.instance_url", self.cfg.instance_url or "")
            raise network_error(exc, self.cfg.login_url) from exc
        self._reached = True
        return result

    def _token(self) -> Token:
        try:
            token = self.auth.login()
        except NetworkError as exc:
            if isinstance(exc.__cause__, requests.RequestException):
                self._fail_fast(exc.__cause__, "salesforce.login_url", self.cfg.login_url)
            raise
        if self.cfg.auth != "session":
            self._reached = True
        return token

    def _fail_fast(self, exc: requests.RequestException, key: str, url: str) -> None:
        """On a sink's first contact only: a host that does not resolve, or refuses
        connections, is a mistake in the config (a typo in the URL), not an outage, so it
        fails now instead of after the whole retry budget. Later, the same trouble is an
        outage and is ridden out."""
        why = None if self._reached else unreachable(exc)
        if why is not None:
            host = urlsplit(url).netloc or url
            raise OrgMismatchError(
                key,
                f"{url}: {host} {why}, on the first call of this run. Check the URL "
                f"(a My Domain login URL looks like https://acme.my.salesforce.com).",
            ) from exc

    def _translate(self, exc: SalesforceError) -> Exception:
        code, message = _first_error(exc.content)
        cls = request_error_class(exc.status, code, message)
        text = f"HTTP {exc.status} {code or ''} from {exc.resource_name}: {message}".replace(
            "  ", " "
        )
        if cls is ApiBudgetReached:
            return self.budget.spent()
        if cls is RequestPayloadError:
            response = self.session.last_response
            body = response.request.body if response is not None else None
            return RequestPayloadError(
                text, code=str(code), detail=message, culprit=culprit_index(body, message)
            )
        if issubclass(cls, TransientError):
            return cls(text, retry_after=_retry_after(self.session.last_response))
        hint = REQUEST_HINTS.get(exc.status)
        return cls(f"{text} ({hint})" if hint else text)

    def _on_retry(self, attempt: int, wait: float, exc: TransientError) -> None:
        log.warning(
            "salesforce_retry",
            attempt=attempt,
            wait_seconds=round(wait, 3),
            error_class=type(exc).__name__,
            error=str(exc),
        )
        if self.on_retry is not None:
            self.on_retry(type(exc).__name__)


# The kind of trouble an exhausted retry budget means, in an operator's words.
_WHAT_FAILED: tuple[tuple[type[BaseException], str], ...] = (
    (ServerError, "Salesforce was unavailable (an outage, maintenance or overload)"),
    (NetworkError, "Salesforce could not be reached (a network problem)"),
    (RequestLimitError, "Salesforce kept refusing calls over the org's API request limits"),
)


def _what_failed(cause: BaseException | None) -> str:
    return next(
        (words for kind, words in _WHAT_FAILED if isinstance(cause, kind)),
        "Salesforce kept failing",
    )


# Requests that could not even be built: trying again builds the same one, so they are never
# transient (an InvalidURL retried for 300 s looked like an outage).
_UNBUILDABLE: tuple[type[requests.RequestException], ...] = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidJSONError,
)


def network_error(exc: requests.RequestException, url: str) -> Exception:
    host = urlsplit(url).netloc
    if isinstance(exc, _UNBUILDABLE):
        return SalesforceConfigurationError(
            f"cannot build a request to {host or url!r}: {type(exc).__name__}: {exc}. "
            "Check salesforce.login_url and salesforce.instance_url."
        )
    if isinstance(exc, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return SalesforceConfigurationError(
            f"TLS certificate of {host} is not trusted: {exc}. "
            "Set salesforce.ca_bundle to the CA that signed it."
        )
    return NetworkError(f"{_network_trouble(exc)} ({host}): {type(exc).__name__}: {exc}")


def unreachable(exc: BaseException) -> str | None:
    """Why no connection could even be made, when that is certain: the host name does not
    resolve, or nothing listens at that address. None for anything else (a timeout, a reset,
    TLS), which may well pass."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return f"does not resolve ({current.strerror or current})"
        if isinstance(current, ConnectionRefusedError):
            return "refuses connections (nothing listens there)"
        # requests wraps urllib3's MaxRetryError (.reason), which wraps the socket error.
        todo += [a for a in current.args if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        todo += [
            e
            for e in (reason, current.__cause__, current.__context__)
            if isinstance(e, BaseException)
        ]
    return None


def _network_trouble(exc: requests.RequestException) -> str:
    text = str(exc).lower()
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "could not connect within salesforce.timeout_seconds"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no answer within salesforce.timeout_seconds"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "reset" in text:
        return "the connection was reset before the answer was complete"
    if "refused" in text:
        return "connection refused"
    return "network error"


def _version_problem(version: str, served: Sequence[str]) -> str:
    ordered = sorted(served, key=float)
    span = f"it serves {ordered[0]} to {ordered[-1]}"
    if float(version) < float(ordered[0]):
        return f"{version} is retired by this org; {span}"
    if float(version) > float(ordered[-1]):
        return f"{version} is not served by this org yet; {span}"
    return f"{version} is not served by this org; it serves {', '.join(ordered)}"


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _first_error(content: Any) -> tuple[str | None, str]:
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        first = content[0]
        return first.get("errorCode"), str(first.get("message", ""))
    # An HTML error page (a 503 maintenance page, a proxy's 502): its visible text only.
    text = re.sub(r"(?is)<(head|script|style)\b.*?</\1>", " ", str(content))
    text = re.sub(r"<[^>]+>", " ", text)
    return None, " ".join(text.split())[:200]


_LOCATION = re.compile(r"\[line:(\d+), column:(\d+)\]")
_NAMED_VALUE = re.compile(r" value (.*) or request may be missing a required field")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def culprit_index(body: Any, message: str) -> int | None:
    """The index of the record a payload 400 is about, or None when unsure.

    Salesforce names the line and column of the value it could not read, in the body as
    sent, and the value itself. The record is the one whose text holds that place, and only
    if it also holds that value: a place read differently than we think must not blame a
    record that is fine (the export core then splits the request instead).
    """
    where = _LOCATION.search(message)
    if where is None or not isinstance(body, bytes | str):
        return None
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    line, column = int(where[1]), int(where[2])
    starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]
    if not 1 <= line <= len(starts) or column < 1:
        return None
    offset = starts[line - 1] + column - 1
    try:
        spans = _record_spans(text)
    except (ValueError, IndexError):
        return None
    for index, (start, end, record) in enumerate(spans):
        if start <= offset < end:
            return index if _holds(record, message) else None
    return None


def _record_spans(text: str) -> list[tuple[int, int, Any]]:
    """Each record of a Collections body: where its text starts and ends, and the record."""
    decoder = json.JSONDecoder()

    def skip(at: int) -> int:
        match = _WHITESPACE.match(text, at)
        return match.end() if match else at

    pos = skip(0)
    if text[pos] != "{":
        return []
    pos += 1
    while True:
        pos = skip(pos)
        if text[pos] == ",":
            pos = skip(pos + 1)
        if text[pos] == "}":
            return []
        key, pos = decoder.raw_decode(text, pos)
        pos = skip(skip(pos) + 1)
        if key != "records" or text[pos] != "[":
            _, pos = decoder.raw_decode(text, pos)
            continue
        spans: list[tuple[int, int, Any]] = []
        pos += 1
        while True:
            pos = skip(pos)
            if text[pos] == ",":
                pos = skip(pos + 1)
            if text[pos] == "]":
                return spans
            start = pos
            record, pos = decoder.raw_decode(text, pos)
            spans.append((start, pos, record))


def _holds(record: Any, message: str) -> bool:
    if not isinstance(record, Mapping):
        return False
    values = [v for k, v in record.items() if k != "attributes"]
    named = _NAMED_VALUE.search(message)
    if named is None:
        # "from START_ARRAY value [line:..]" names no value: an array is all there is to see.
        return "START_ARRAY" in message and any(isinstance(v, list) for v in values)
    return any(_json_text(v) == named[1] for v in values)


def _json_text(value: Any) -> str | None:
    """A value as Salesforce quotes it in a JSON_PARSER_ERROR."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{"
    return None


def _retry_after(response: requests.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _upsert_result(item: Mapping[str, Any]) -> UpsertResult:
    errors = tuple(
        RecordError(
            str(e.get("statusCode") or e.get("errorCode") or "UNKNOWN"),
            str(e.get("message", "")),
            tuple(str(f) for f in (e.get("fields") or ())),
        )
        for e in (item.get("errors") or ())
    )
    return UpsertResult(
        success=bool(item.get("success")),
        created=item.get("created"),
        id=item.get("id"),
        errors=errors,
    )
