"""Salesforce over HTTP: the one place that speaks to it.

- ``http``: the session every call goes through, and what it counts;
- ``auth``: logging in (client credentials, password, JWT, session);
- ``sink``: ``SalesforceSink``, the export core's Sink port (Collections, describe, query,
  /limits) with retries, re-authentication and the API budget governor;
- ``answers``: reading Salesforce's answers (errors in an operator's words, which record a
  refused request is about, Retry-After, per-record results).

Authentication happens here, against ``salesforce.login_url``, so the sandbox org, My Domains
and test orgs all work alike. simple-salesforce then gets ``instance_url`` and ``session_id``
("direct" mode) and our own ``requests.Session``: with a timeout on every call, our CA
settings, and ``trust_env`` off because REQUESTS_CA_BUNDLE would silently override
``verify``. Direct mode also means simple-salesforce never re-logs in by itself (its
SFType path loops forever on a persistent 401, issue #804); we re-authenticate here, bounded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each name re-exported here lives, imported on first use (PEP 562): requests,
# simple-salesforce (and the zeep, lxml and cryptography it pulls in) cost about 130 ms,
# which a run with nothing to send must not pay (``deferred.DeferredSink``).
_EXPORTS = {
    "Authenticator": "auth",
    "CallKind": "http",
    "CountingSession": "http",
    "DeferredSink": "deferred",
    "HttpSession": "http",
    "SalesforceSink": "sink",
    "Token": "auth",
    "call_kind": "http",
    "culprit_index": "answers",
    "jwt_audience": "auth",
    "network_error": "answers",
    "trust_store": "http",
    "usage_from_header": "http",
    "usage_from_limits": "http",
}

__all__ = [
    "Authenticator",
    "CallKind",
    "CountingSession",
    "DeferredSink",
    "HttpSession",
    "SalesforceSink",
    "Token",
    "call_kind",
    "culprit_index",
    "jwt_audience",
    "network_error",
    "trust_store",
    "usage_from_header",
    "usage_from_limits",
]

if TYPE_CHECKING:
    from crm_export.salesforce.answers import culprit_index, network_error
    from crm_export.salesforce.auth import Authenticator, Token, jwt_audience
    from crm_export.salesforce.deferred import DeferredSink
    from crm_export.salesforce.http import (
        CallKind,
        CountingSession,
        HttpSession,
        call_kind,
        trust_store,
        usage_from_header,
        usage_from_limits,
    )
    from crm_export.salesforce.sink import SalesforceSink


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
