"""Run a sandbox org inside a test, like ``structlog.testing``.

    with running_sandbox(faults={"lock_row_rate": 0.5}) as sandbox:
        session = sandbox.requests_session()
        sf = Salesforce(instance_url=sandbox.base_url, session_id=sandbox.access_token(),
                        session=session, version="64.0")
        ...
        assert sandbox.records("Contact")[0]["LastName"] == "Smith"

Admin calls go over HTTPS to the sandbox's admin API, the same way another process would.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import requests

from crm_export.sandbox.admin_client import AdminClient, verified_session
from crm_export.sandbox.server import SandboxServer

__all__ = ["LoopbackSession", "SandboxHandle", "running_sandbox"]

STORE_ENV = "CRM_EXPORT_TEST_SANDBOX_STORE"


class LoopbackSession(requests.Session):
    """Sends every ``https://<any host>`` URL to the sandbox, trusting only its CA.

    simple-salesforce's login flows always post to ``https://{domain}.salesforce.com``;
    with this session they reach the sandbox instead. It also sets a default timeout,
    which simple-salesforce never does.
    """

    def __init__(self, base_url: str, ca_path: str, timeout: float = 30.0) -> None:
        super().__init__()
        self.target = base_url.rstrip("/")
        self.verify = ca_path
        self.trust_env = False
        self.timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        text = url.decode() if isinstance(url, bytes) else url
        text = re.sub(r"^https://[^/]+", self.target, text)
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, text, *args, **kwargs)


class SandboxHandle(AdminClient):
    """A running sandbox: where it is, how to log in, and its admin API."""

    def __init__(self, server: SandboxServer) -> None:
        super().__init__(server.base_url, server.ca_path)
        self.server = server
        info = server.state.org
        client = info.default_client
        user = info.default_user
        self.client_id = client.client_id if client else ""
        self.client_secret = client.client_secret if client else ""
        self.username = user.username if user else ""
        self.password = user.password if user else ""

    @property
    def port(self) -> int:
        return self.server.port

    def requests_session(self) -> requests.Session:
        """A plain session for ``Salesforce(session=...)``; close it when done."""
        return verified_session(self.ca_path)

    def loopback_session(self, timeout: float = 30.0) -> LoopbackSession:
        """A session for simple-salesforce's login flows (see :class:`LoopbackSession`)."""
        return LoopbackSession(self.base_url, self.ca_path, timeout)

    def access_token(self) -> str:
        """A fresh token from the client-credentials grant (counts one ``token`` call)."""
        with self.requests_session() as session:
            response = session.post(
                f"{self.base_url}/services/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(self.client_id, self.client_secret),
                timeout=self.timeout,
            )
        response.raise_for_status()
        return str(response.json()["access_token"])


@contextmanager
def running_sandbox(
    org: str | Path | Mapping[str, Any] | None = None,
    faults: Mapping[str, Any] | None = None,
    seed: int = 0,
    data: Path | None = None,
    *,
    state_dir: Path | None = None,
    verbose: bool = False,
) -> Iterator[SandboxHandle]:
    """Serve a sandbox org on a free port in a background thread; stop it on exit.

    With ``$CRM_EXPORT_TEST_SANDBOX_STORE=sqlite``, a sandbox given no ``data`` file keeps its
    records in a temporary SQLite file instead of memory, so a whole test suite can run on
    the file-backed store.
    """
    with ExitStack() as stack:
        if data is None and os.environ.get(STORE_ENV) == "sqlite":
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="crm-sandbox-"))
            data = Path(scratch) / "records.sqlite"
        server = SandboxServer(
            org=org, faults=faults, seed=seed, data=data, state_dir=state_dir, verbose=verbose
        )
        server.start()
        stack.callback(server.stop)
        yield SandboxHandle(server)
