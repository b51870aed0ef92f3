"""``SalesforceSink``: the export core's Sink port over Salesforce's REST API (sObject
Collections upserts, describe, query, /limits), with request-level retries, bounded
re-authentication and the API budget governor."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceError

from crm_export.budget import ApiBudget
from crm_export.classify import REQUEST_HINTS, request_error_class
from crm_export.config import RetryConfig, SalesforceConfig
from crm_export.errors import (
    ApiBudgetReached,
    NetworkError,
    OrgMismatchError,
    RequestPayloadError,
    RetriesExhaustedError,
    SalesforceConfigurationError,
    ServerError,
    SessionExpiredError,
    TransientError,
)
from crm_export.ports import ApiUsage, SObjectDescribe, UpsertResult
from crm_export.retry import Backoff, Clock, call_with_retries
from crm_export.salesforce.answers import (
    culprit_index,
    first_error,
    json_body,
    network_error,
    retry_after_of,
    unreachable,
    upsert_result,
    version_problem,
    what_failed,
)
from crm_export.salesforce.auth import Authenticator, Token
from crm_export.salesforce.http import CountingSession, trust_store, usage_from_limits

log = structlog.get_logger("crm_export.salesforce")


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
        connections: int = 10,
    ) -> None:
        """``connections``: the most calls this sink may have in flight at once (threads)."""
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
            cfg.timeout_seconds, trust_store(cfg.ca_bundle), self.budget.seen, connections
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
        # Calls may come from several threads (streams side by side, batches in flight): one
        # login and one describe serve them all.
        self._login_lock = threading.Lock()
        self._describe_lock = threading.Lock()

    @property
    def api_calls(self) -> int:
        return self.session.charged

    @property
    def logins(self) -> int:
        return self.session.logins

    def thread_counts(self) -> tuple[int, int]:
        return self.session.thread_counts()

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
        with self._login_lock:
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

    def _expired(self, client: Salesforce) -> None:
        """``client``'s session was refused: the next call logs in again, unless another
        thread already did (calls in flight all meet the same expiry: one login serves)."""
        with self._login_lock:
            if self._client is client:
                self._client = None

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
                retry_after=retry_after_of(response),
            )
        listed = json_body(response)
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
                "salesforce.api_version", version_problem(self.cfg.api_version, served)
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
        return [upsert_result(item) for item in data]

    def describe(self, sobject: str) -> SObjectDescribe | None:
        key = sobject.casefold()
        with self._describe_lock:  # batches in flight together ask once
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

    def raw_request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """One call under ``services/data/vXX.X/`` whose answer is not JSON (Bulk API 2.0's
        CSV), with everything ``upsert`` has: counted, governed, retried, re-authenticated."""
        raw = {"data": data, "headers": dict(headers or {})}
        response: requests.Response = self._request(method, path, json, raw=raw)
        return response

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        params: Mapping[str, str] | None = None,
        missing_ok: bool = False,
        governed: bool = True,
        raw: dict[str, Any] | None = None,
    ) -> Any:
        def attempt() -> Any:
            if governed:
                # Before every charged call, retries included: at most one call past the line.
                self.budget.before_call(self.read_limits)
            # A token can expire between any two calls; a fresh one fixes that, but a 401
            # that survives several fresh tokens is a person's problem, not a retry's.
            for _ in range(self.cfg.max_reauth + 1):
                used: list[Salesforce] = []
                try:
                    return self._call(used, method, path, body, params, missing_ok, raw)
                except SessionExpiredError:
                    log.info("salesforce_session_expired", detail="re-authenticating")
                    self._expired(used[0])
            raise SalesforceConfigurationError(
                f"401 INVALID_SESSION_ID persisted after {self.cfg.max_reauth} fresh logins: "
                "the integration user's session is refused (check its profile, IP "
                "restrictions and the connected app's policies)"
            )

        try:
            return call_with_retries(attempt, self.backoff, self.clock, self.rng, self._on_retry)
        except RetriesExhaustedError as exc:
            raise RetriesExhaustedError(
                f"{what_failed(exc.__cause__)}; {str(exc).rstrip('.')}. Nothing was skipped: "
                "the next run resumes where this one stopped.",
                retry_after=exc.retry_after,
            ) from exc.__cause__

    def _call(
        self,
        used: list[Salesforce],
        method: str,
        path: str,
        body: Any,
        params: Mapping[str, str] | None = None,
        missing_ok: bool = False,
        raw: dict[str, Any] | None = None,
    ) -> Any:
        try:
            used.append(client := self._login())
            result: Any
            if raw is not None:
                # The Response itself (simple-salesforce raises for any status >= 300).
                result = client._call_salesforce(
                    method, client.base_url + path, name=path, json=body, **raw
                )
            else:
                result = client.restful(
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
        code, message = first_error(exc.content)
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
            return cls(text, retry_after=retry_after_of(self.session.last_response))
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
