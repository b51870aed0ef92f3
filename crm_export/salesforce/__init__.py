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

from crm_export.salesforce.answers import culprit_index, network_error
from crm_export.salesforce.auth import Authenticator, Token, jwt_audience
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

__all__ = [
    "Authenticator",
    "CallKind",
    "CountingSession",
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
