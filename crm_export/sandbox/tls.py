"""A throwaway CA and a 127.0.0.1/localhost certificate, made fresh at every start.

Clients trust the CA file; nothing anywhere turns verification off.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

CA_FILE_NAME = "ca.pem"


@dataclass(frozen=True)
class ServerTLS:
    ca_path: Path
    context: ssl.SSLContext


def make_server_tls(directory: Path) -> ServerTLS:
    ca = trustme.CA(organization_name="crm-export sandbox org")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = (directory / CA_FILE_NAME).resolve()
    ca.cert_pem.write_to_path(str(ca_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return ServerTLS(ca_path=ca_path, context=context)
