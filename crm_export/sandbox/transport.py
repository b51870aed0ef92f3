"""The sandbox's HTTP/1.1 transport: kept-alive connections, as a real org's edge keeps them.

werkzeug's development server answers ``Connection: close`` to every request, because it
cannot tell where an unread request body ends, so every call paid a TLS handshake and a
client's handling of a pooled connection closed under it was never exercised. Here each
exchange is run to the end of its request body, the answer always carries its length, and
the connection then waits for the next request, as behind a load balancer:

* a connection idle for ``idle_timeout_seconds`` is forgotten, as a load balancer or NAT
  forgets a flow: nothing is sent, and the client's next request on it gets a TCP reset
  before any byte of an answer (``ConnectionResetError``), which is what clients report from
  Salesforce after an idle pause;
* accepted sockets set TCP_NODELAY: the head and the body of an answer are two writes, and
  Nagle's algorithm held the second until the client's delayed ACK;
* connections, TLS handshakes, requests (and how many came on a reused connection) and idle
  drops are counted in the admin counters' ``transport``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wsgi import LimitedStream

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from crm_export.sandbox.activity import Activity

# How long a forgotten connection is held, waiting for the request it will refuse.
FORGOTTEN_HOLD_SECONDS = 600.0
# A reset fault leaves the client this long to read the half answer: an RST discards whatever
# the client has not read yet, and then it would see no answer at all.
RESET_FAULT_DELAY_SECONDS = 0.05


class ResetByFault(ConnectionResetError):
    """Raised after writing half an answer, so the connection is reset instead of closed."""


class KeepAliveHandler(WSGIRequestHandler):
    """One connection: a TLS handshake, then requests until the client or idleness ends it."""

    protocol_version = "HTTP/1.1"
    # A client stalled in the middle of a request must not hold a handler thread forever.
    timeout = 60
    server: SandboxHTTPServer

    def handle(self) -> None:
        try:
            self.connection.do_handshake()
        except OSError as exc:
            self.log_error("TLS handshake failed: %s", exc)
            return
        self.server.activity.count_transport("tls_handshakes")
        self.served = 0
        super().handle()

    def handle_one_request(self) -> None:
        if not self._wait_for_request():
            self.close_connection = True
            return
        super().handle_one_request()

    def _wait_for_request(self) -> bool:
        """Until the next request's first byte; False if the connection is to end instead."""
        idle = self.server.idle_timeout()
        self.server.waiting(self.connection, True)
        try:
            # 0 means connections are never dropped for idleness.
            self.connection.settimeout(idle if idle > 0 else None)
            ready = self.rfile.peek(1)  # type: ignore[attr-defined]
        except TimeoutError:
            self._forget()
            return False
        except OSError:
            return False
        finally:
            self.server.waiting(self.connection, False)
        if not ready:
            return False
        self.connection.settimeout(self.timeout)
        return True

    def _forget(self) -> None:
        """The load balancer forgot this connection: refuse its next request with a reset."""
        activity = self.server.activity
        activity.count_transport("idle_dropped")
        if self.server.wait_readable(self.connection, FORGOTTEN_HOLD_SECONDS):
            activity.count_transport("idle_resets")
        self.server.reset_on_close(self.request, 0.0)

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.environ = environ = self.make_environ()
        body = _request_body(environ)
        environ["wsgi.input"] = body
        self.served += 1
        activity = self.server.activity
        activity.count_transport("requests")
        if self.served > 1:
            activity.count_transport("reused")
        started: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            started[:] = [status, headers]
            return _no_write

        try:
            answer = self.server.app(environ, start_response)
            try:
                payload = b"".join(answer)
            finally:
                close = getattr(answer, "close", None)
                if close is not None:
                    close()
        except ConnectionError as exc:
            self.connection_dropped(exc, environ)
            return
        except TimeoutError as exc:
            self.connection_dropped(exc, environ)
            return
        except Exception as exc:
            # The application answers its own errors; this is a bug in the sandbox itself.
            self.log_error("sandbox error on %s %s: %r", self.command, self.path, exc)
            self.close_connection = True
            started[:] = ["500 Internal Server Error", [("Content-Type", "text/plain")]]
            payload = b"sandbox error"
        self._discard(body)
        status, headers = started
        self._answer(status, headers, payload)

    def _answer(self, status: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for key, value in headers:
            if key.lower() not in {"content-length", "connection", "transfer-encoding"}:
                self.send_header(key, value)
        if int(code) not in {204, 304} and not 100 <= int(code) < 200:
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    def _discard(self, body: Any) -> None:
        """Read what the application left of the request body, so the next request line is
        where the client put it."""
        try:
            if isinstance(body, LimitedStream):
                body.exhaust()
            else:
                while body.read(65536):
                    pass
        except Exception:
            # The client left or sent a broken body: nothing more can be read from it.
            self.close_connection = True

    def connection_dropped(
        self, error: BaseException, environ: WSGIEnvironment | None = None
    ) -> None:
        self.close_connection = True
        if isinstance(error, ResetByFault):
            self.server.reset_on_close(self.request, RESET_FAULT_DELAY_SECONDS)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.server.verbose:
            super().log_request(code, size)

    def log_error(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_error(format, *args)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


def _request_body(environ: WSGIEnvironment) -> Any:
    """The request body as a stream that ends where the body ends."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        return stream  # chunked: the dechunking reader ends at the last chunk
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    return LimitedStream(stream, max(0, length))


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the sandbox's applications return their answers")


class SandboxHTTPServer(ThreadedWSGIServer):
    """Threaded HTTPS server with TCP_NODELAY, kept-alive connections and a clean stop."""

    def __init__(
        self,
        host: str,
        port: int,
        app: Any,
        *,
        ssl_context: Any,
        fd: int,
        activity: Activity,
        idle_timeout: Callable[[], float],
        verbose: bool = False,
    ) -> None:
        super().__init__(host, port, app, handler=KeepAliveHandler, ssl_context=ssl_context, fd=fd)
        self.activity = activity
        self.idle_timeout = idle_timeout
        self.verbose = verbose
        self._lock = threading.Lock()
        self._handler_threads: set[threading.Thread] = set()
        self._waiting: set[Any] = set()
        self._reset: dict[Any, float] = {}
        self._stopping = threading.Event()

    def get_request(self) -> tuple[Any, Any]:
        request, address = super().get_request()
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.activity.count_transport("connections")
        return request, address

    def process_request(self, request: Any, client_address: Any) -> None:
        # Track handler threads ourselves so stop() can wait for them.
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        with self._lock:
            self._handler_threads.add(thread)
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._handler_threads.discard(threading.current_thread())

    def waiting(self, connection: Any, idle: bool) -> None:
        """Note whether ``connection`` is idle between requests, so stop() can end it."""
        with self._lock:
            if idle and not self._stopping.is_set():
                self._waiting.add(connection)
            else:
                self._waiting.discard(connection)
        if idle and self._stopping.is_set():
            _shut(connection)

    def wait_readable(self, connection: Any, seconds: float) -> bool:
        """Wait up to ``seconds`` for the client to send on ``connection`` (or close it)."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                readable, _, _ = select.select([connection], [], [], min(left, 0.2))
            except (OSError, ValueError):
                return False
            if readable:
                return True
        return False

    def reset_on_close(self, request: Any, delay: float) -> None:
        with self._lock:
            self._reset[request] = delay

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            delay = self._reset.pop(request, None)
        if delay is None:
            super().shutdown_request(request)
            return
        if delay:
            time.sleep(delay)
        # SO_LINGER 0 makes close() send an RST: the client sees a reset, not a clean end.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.close()

    def end_idle_connections(self) -> None:
        """From now on, end every connection waiting for a request, instead of waiting."""
        self._stopping.set()
        with self._lock:
            idle = list(self._waiting)
            self._waiting.clear()
        for connection in idle:
            _shut(connection)

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._handler_threads)
            if not threads:
                return
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return


def _shut(connection: Any) -> None:
    # The plain socket's shutdown, not SSLSocket's: that one drops the TLS state under the
    # handler thread still reading from it. The read then ends as if the client had left.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(connection, socket.SHUT_RDWR)
