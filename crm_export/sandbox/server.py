"""The HTTPS server: routing, the fault and limit pipeline, and a clean start/stop.

Every Salesforce-facing request goes: count the call → latency → outage → injected
HTTP error → (data endpoints) session check → concurrency limit → random request limit
→ daily API limit → handler → maybe a connection reset mid-response.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.wrappers import Request, Response

from crm_export.sandbox import admin, records, rest, versions
from crm_export.sandbox.auth import soap_fault
from crm_export.sandbox.dml import RequestError
from crm_export.sandbox.state import SandboxState
from crm_export.sandbox.tls import make_server_tls
from crm_export.sandbox.transport import ResetByFault, SandboxHTTPServer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("crm_export.sandbox")

HOST = "127.0.0.1"


class _VersionConverter(BaseConverter):
    regex = r"\d+\.\d+"


_DATA = "/services/data/v<version:version>"
_DATA_VERSION = re.compile(r"/services/data/v(\d+\.\d+)(?:/|$)")
URL_MAP = Map(
    [
        Rule("/services/oauth2/token", endpoint="token", methods=["POST"]),
        Rule("/services/Soap/u/<version:version>", endpoint="soap_login", methods=["POST"]),
        Rule("/services/data", endpoint="versions", methods=["GET"]),
        Rule(_DATA, endpoint="version_resources", methods=["GET"]),
        # Outside /services/data these have no API version; their handlers ignore it.
        Rule(
            "/services/oauth2/userinfo",
            endpoint="userinfo",
            methods=["GET", "POST"],
            defaults={"version": "64.0"},
        ),
        Rule(
            "/id/<org_id>/<user_id>",
            endpoint="identity",
            methods=["GET"],
            defaults={"version": "64.0"},
        ),
        Rule(f"{_DATA}/limits", endpoint="limits", methods=["GET"]),
        Rule(f"{_DATA}/sobjects", endpoint="describe_global", methods=["GET"]),
        Rule(f"{_DATA}/sobjects/<sobject>", endpoint="sobject_info", methods=["GET"]),
        Rule(f"{_DATA}/sobjects/<sobject>", endpoint="create", methods=["POST"]),
        Rule(f"{_DATA}/sobjects/<sobject>/describe", endpoint="describe", methods=["GET"]),
        Rule(f"{_DATA}/sobjects/<sobject>/<record_id>", endpoint="get_record", methods=["GET"]),
        Rule(
            f"{_DATA}/sobjects/<sobject>/<field>/<path:value>",
            endpoint="single_upsert",
            methods=["PATCH"],
        ),
        Rule(
            f"{_DATA}/sobjects/<sobject>/<field>/<path:value>",
            endpoint="get_by_external_id",
            methods=["GET"],
        ),
        Rule(f"{_DATA}/query", endpoint="query", methods=["GET"]),
        Rule(f"{_DATA}/queryAll", endpoint="query", methods=["GET"]),
        Rule(
            f"{_DATA}/composite/sobjects/<sobject>/<field>",
            endpoint="composite_upsert",
            methods=["PATCH"],
        ),
        Rule(f"{_DATA}/composite/sobjects", endpoint="composite_create", methods=["POST"]),
        Rule(f"{_DATA}/composite/sobjects", endpoint="composite_update", methods=["PATCH"]),
        Rule(f"{_DATA}/composite/sobjects", endpoint="composite_delete", methods=["DELETE"]),
        Rule(f"{_DATA}/jobs/ingest", endpoint="bulk_create", methods=["POST"]),
        Rule(f"{_DATA}/jobs/ingest", endpoint="bulk_list", methods=["GET"]),
        Rule(f"{_DATA}/jobs/ingest/<job_id>", endpoint="bulk_get", methods=["GET"]),
        Rule(f"{_DATA}/jobs/ingest/<job_id>", endpoint="bulk_state", methods=["PATCH"]),
        Rule(f"{_DATA}/jobs/ingest/<job_id>", endpoint="bulk_delete", methods=["DELETE"]),
        Rule(f"{_DATA}/jobs/ingest/<job_id>/batches", endpoint="bulk_upload", methods=["PUT"]),
        Rule(f"{_DATA}/jobs/ingest/<job_id>/<kind>", endpoint="bulk_results", methods=["GET"]),
        Rule("/_sandbox", endpoint="admin_info", methods=["GET"]),
        Rule("/_sandbox/info", endpoint="admin_info", methods=["GET"]),
        Rule("/_sandbox/records", endpoint="admin_records", methods=["GET"]),
        Rule("/_sandbox/records/<sobject>", endpoint="admin_records", methods=["GET", "POST"]),
        Rule("/_sandbox/counters", endpoint="admin_counters", methods=["GET"]),
        Rule("/_sandbox/writes", endpoint="admin_writes", methods=["GET"]),
        Rule("/_sandbox/rejections", endpoint="admin_rejections", methods=["GET"]),
        Rule("/_sandbox/jobs", endpoint="admin_jobs", methods=["GET"]),
        Rule("/_sandbox/faults", endpoint="admin_faults", methods=["GET", "PUT", "DELETE"]),
        Rule("/_sandbox/org", endpoint="admin_org", methods=["GET", "PUT", "PATCH"]),
        Rule("/_sandbox/reset", endpoint="admin_reset", methods=["POST"]),
    ],
    converters={"version": _VersionConverter},
    merge_slashes=False,
)

_DATA_HANDLERS: dict[str, Callable[..., Response]] = {
    "limits": rest.limits,
    "describe_global": rest.describe_global,
    "describe": rest.describe,
    "get_record": rest.get_record,
    "single_upsert": rest.single_upsert,
    "get_by_external_id": rest.get_by_external_id,
    "query": rest.query,
    "composite_upsert": rest.composite_upsert,
    "version_resources": rest.version_resources,
    "userinfo": rest.userinfo,
    "identity": rest.identity,
    "sobject_info": rest.sobject_info,
    "create": records.create,
    "composite_create": records.composite_create,
    "composite_update": records.composite_update,
    "composite_delete": records.composite_delete,
    "bulk_create": rest.bulk_create,
    "bulk_list": rest.bulk_list,
    "bulk_get": rest.bulk_get,
    "bulk_state": rest.bulk_state,
    "bulk_delete": rest.bulk_delete,
    "bulk_upload": rest.bulk_upload,
    "bulk_results": rest.bulk_results,
}

_MAINTENANCE_PAGE = """<!DOCTYPE html>
<html><head><title>Service Unavailable</title></head>
<body><h1>Service Unavailable</h1>
<p>The server is temporarily unable to service your request due to maintenance downtime or
capacity problems. Please try again later.</p></body></html>
"""

_GATEWAY_PAGE = """<!DOCTYPE html>
<html><head><title>{status} {reason}</title></head>
<body><h1>{reason}</h1><p>The upstream server did not answer in time.</p></body></html>
"""


def _request_error(status: int, code: str, message: str) -> Response:
    return rest.json_response([{"message": message, "errorCode": code}], status)


def _invalid_session() -> Response:
    return _request_error(401, "INVALID_SESSION_ID", "Session expired or invalid")


def _injected_error(status: int, endpoint: str | None, retry_after: int = 0) -> Response:
    response = _injected_page(status, endpoint)
    if retry_after and status in {429, 503}:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _injected_page(status: int, endpoint: str | None) -> Response:
    if status == 503:
        return Response(_MAINTENANCE_PAGE, 503, content_type="text/html;charset=UTF-8")
    if status in {502, 504}:
        reason = "Bad Gateway" if status == 502 else "Gateway Timeout"
        page = _GATEWAY_PAGE.format(status=status, reason=reason)
        return Response(page, status, content_type="text/html;charset=UTF-8")
    if endpoint == "token":
        return rest.json_response(
            {"error": "unknown_error", "error_description": "retry your request"}, status
        )
    if status == 429:
        return _request_error(429, "REQUEST_LIMIT_EXCEEDED", "Too many requests; slow down.")
    return _request_error(
        500,
        "UNKNOWN_EXCEPTION",
        "An unexpected error occurred. Please include this ErrorId if you contact support: "
        "1427309744-117 (-1123345678)",
    )


class SandboxApp:
    """The WSGI application."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        response, reset = self._respond(request)
        if reset:
            self._reset_mid_response(environ, response)
        return response(environ, start_response)

    def _respond(self, request: Request) -> tuple[Response, bool]:
        state = self.state
        path = request.path.rstrip("/") or "/"
        endpoint: str | None = None
        args: Mapping[str, Any] = {}
        not_allowed: MethodNotAllowed | None = None
        try:
            endpoint, args = URL_MAP.bind("127.0.0.1").match(path, method=request.method)
        except NotFound:
            pass
        except MethodNotAllowed as exc:
            not_allowed = exc
        try:
            state.advance_jobs()
            if endpoint is not None and endpoint.startswith("admin_"):
                return admin.handle(state, request, endpoint, args), False
            state.activity.count_call(endpoint or "unknown")
            gauge = path.startswith("/services/data/")
            inflight = state.enter_request() if gauge else 0
            try:
                response, reset = self._salesforce(
                    request, path, endpoint, args, not_allowed, inflight
                )
            finally:
                if gauge:
                    state.leave_request()
        except Exception:
            log.exception("sandbox error on %s %s", request.method, request.path)
            response, reset = _injected_error(500, endpoint), False
        if endpoint != "versions":  # the versions list is no API call, and says so
            response.headers["Sforce-Limit-Info"] = _limit_info(state)
        return response, reset

    def _salesforce(
        self,
        request: Request,
        path: str,
        endpoint: str | None,
        args: Mapping[str, Any],
        not_allowed: MethodNotAllowed | None,
        inflight: int,
    ) -> tuple[Response, bool]:
        state = self.state
        faults = state.faults
        config = faults.config
        activity = state.activity
        reset = False
        if faults.applies_to(path):
            if config.latency_ms > 0:
                activity.count_fault("latency")
                time.sleep(config.latency_ms / 1000)
            if faults.outage_remaining() > 0:
                activity.count_fault("outage")
                return _injected_error(503, endpoint, config.retry_after_seconds), False
            status = faults.http_error()
            if status is not None:
                activity.count_fault(f"http_{status}")
                return _injected_error(status, endpoint, config.retry_after_seconds), False
            reset = faults.draw("reset", config.reset_rate)
            if reset:
                activity.count_fault("reset")

        version = _DATA_VERSION.match(path)
        if version is not None:
            refused = versions.refusal(
                version.group(1), config.oldest_api_version, config.newest_api_version
            )
            if refused is not None:
                activity.count_fault("api_version")
                return refused, reset
        if not_allowed is not None:
            allowed = ",".join(sorted(not_allowed.valid_methods or []))
            return _request_error(
                405,
                "METHOD_NOT_ALLOWED",
                f"HTTP Method '{request.method}' not allowed. Allowed are {allowed}",
            ), reset
        if endpoint is None:
            return _request_error(404, "NOT_FOUND", "The requested resource does not exist"), reset
        if endpoint == "token":
            return rest.oauth_token(state, request), reset
        if endpoint == "soap_login":
            unsupported = versions.soap_unsupported_message(
                args["version"], config.oldest_api_version
            )
            if unsupported is not None:
                fault = soap_fault("UNSUPPORTED_API_VERSION", unsupported)
                return Response(fault, 500, content_type="text/xml"), reset
            return rest.soap_login(state, request, args["version"]), reset
        if endpoint == "versions":
            return versions.versions_answer(
                config.oldest_api_version, config.newest_api_version
            ), reset

        token, expired = state.tokens.check(
            _bearer(request), config.token_ttl_seconds, config.token_ttl_calls
        )
        if expired:
            activity.count_fault("token_expired")
        if token is None:
            return _invalid_session(), reset
        if config.max_concurrent_requests and inflight > config.max_concurrent_requests:
            activity.count_fault("concurrency_limit")
            return _request_error(
                403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."
            ), reset
        if faults.applies_to(path) and faults.draw("request_limit", config.request_limit_rate):
            activity.count_fault("request_limit")
            return _request_error(
                403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."
            ), reset
        if not activity.use_api(config.daily_api_limit, config.daily_api_overrun):
            activity.count_fault("daily_api_limit")
            return _request_error(
                403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."
            ), reset

        route_args = dict(args)
        version = route_args.pop("version")
        call = rest.Call(state, request, version, token, activity.next_request())
        try:
            return _DATA_HANDLERS[endpoint](call, **route_args), reset
        except RequestError as exc:
            return rest.json_response(exc.body(), exc.status), reset

    def _reset_mid_response(self, environ: WSGIEnvironment, response: Response) -> None:
        sock = environ.get("werkzeug.socket")
        if sock is None:
            return
        body = response.get_data()
        head = [f"HTTP/1.1 {response.status}"]
        head += [f"{key}: {value}" for key, value in response.headers.items()]
        if "Content-Length" not in response.headers:
            head.append(f"Content-Length: {len(body)}")
        if body:
            raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body[: len(body) // 2]
        else:
            # Half of no body is the whole of it, and an answer cut inside its headers still
            # reads as complete (http.client takes end of stream for their end): nothing is
            # sent, as when the connection drops before the answer leaves.
            raw = b""
        with contextlib.suppress(OSError):
            sock.sendall(raw)
        raise ResetByFault("connection reset by the sandbox's reset_rate fault")


def _limit_info(state: SandboxState) -> str:
    """``api-usage=N/M``, and ``; api-bursts=B/E`` for an org entitled to bursts: B is 1 once
    usage has run past the allocation, as it may before calls are refused."""
    config = state.faults.config
    used, limit = state.activity.api_used, config.daily_api_limit
    info = f"api-usage={used}/{limit}"
    if config.api_bursts:
        info += f"; api-bursts={int(used > limit)}/{config.api_bursts}"
    return info


def _bearer(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in {"bearer", "oauth"}:
        return value.strip()
    return ""


class SandboxServer:
    """One sandbox org serving HTTPS on 127.0.0.1; use ``start()``/``stop()`` or ``with``."""

    def __init__(
        self,
        *,
        org: str | Path | Mapping[str, Any] | None = None,
        faults: Mapping[str, Any] | None = None,
        seed: int = 0,
        data: Path | None = None,
        port: int = 0,
        state_dir: Path | None = None,
        verbose: bool = False,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._thread: threading.Thread | None = None
        self.state = SandboxState(org=org, faults=faults, seed=seed, data=data)
        try:
            if state_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="crm-export-sandbox-")
                state_dir = Path(self._tmp.name)
            self.state_dir = state_dir
            tls = make_server_tls(state_dir)
            self.app = SandboxApp(self.state)
            injector = self.state.faults
            # Bind ourselves: werkzeug exits the process on a bind error, we want an OSError.
            with socket.create_server((HOST, port)) as listener:
                self._httpd = SandboxHTTPServer(
                    HOST,
                    port,
                    self.app,
                    ssl_context=tls.context,
                    fd=listener.fileno(),
                    activity=self.state.activity,
                    idle_timeout=lambda: injector.config.idle_timeout_seconds,
                    verbose=verbose,
                )
            # Handshake in the handler thread, so one silent client cannot block accept().
            self._httpd.socket.do_handshake_on_connect = False  # type: ignore[attr-defined]
        except BaseException:
            self.state.close()
            if self._tmp is not None:
                self._tmp.cleanup()
            raise
        self.state.base_url = f"https://{HOST}:{self.port}"
        self.state.ca_path = str(tls.ca_path)

    @property
    def port(self) -> int:
        return int(self._httpd.port)

    @property
    def base_url(self) -> str:
        return self.state.base_url

    @property
    def ca_path(self) -> str:
        return self.state.ca_path

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.1)

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(
            target=self.serve_forever, name="crm-export-sandbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        try:
            if self._thread is not None:
                self._httpd.shutdown()
                self._thread.join()
                self._thread = None
            self._httpd.server_close()
            self._httpd.end_idle_connections()
            self._httpd.join_handlers(timeout=5)
        finally:
            self.state.close()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
