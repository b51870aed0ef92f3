"""Exception hierarchy.

Retry policy reads the class, never the message: anything that may succeed if tried again
inherits ``TransientError``; anything a person must fix inherits ``TerminalError``.
"""

from __future__ import annotations


class CrmExportError(Exception):
    """Base of every error crm-export raises on purpose."""


class TransientError(CrmExportError):
    """May succeed if tried again later: network, 5XX, limits, expired session."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TerminalError(CrmExportError):
    """Will fail the same way until a person changes something."""


class ConfigError(TerminalError):
    """The config file is invalid. ``problems`` lists every problem found, each naming its key."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config {path}:\n{lines}")


class SchemaOutdatedError(TerminalError):
    """The state database is behind the migrations shipped with this version."""


# Request-level failures (raised by the Salesforce sink)


class NetworkError(TransientError):
    """Connection refused or reset, timeout, TLS handshake cut short."""


class ServerError(TransientError):
    """5XX (or 429) from Salesforce."""


class RequestLimitError(TransientError):
    """403 REQUEST_LIMIT_EXCEEDED: daily allocation or concurrency cap."""


class SessionExpiredError(TransientError):
    """401 INVALID_SESSION_ID: a new token fixes it, once."""


class RetriesExhaustedError(TransientError):
    """A transient failure outlasted the retry budget; the next run resumes."""


class StreamChangedError(TransientError):
    """An operator changed a stream's state (``errors skip``, ``stream reset``) while a run
    was working on it: the run's acknowledgement is refused, so that it cannot overwrite the
    operator's change, and the run stops. The next run starts from the new state."""


class ApiBudgetReached(CrmExportError):
    """The org's daily API usage is at the line crm-export may spend up to
    (``[salesforce] max_api_usage_percent``), or Salesforce refused a call because the
    allocation is spent (403 REQUEST_LIMIT_EXCEEDED "TotalRequests Limit exceeded.").

    Neither transient (retrying within the run spends what is not there) nor terminal
    (nothing is wrong): the run stops sending and is ``deferred``; a later run resumes once
    usage is below the line. ``line`` is None when the org itself refused the call.
    """

    def __init__(self, message: str, *, used: int | None, limit: int | None, line: int | None):
        super().__init__(message)
        self.used = used
        self.limit = limit
        self.line = line


class SalesforceConfigurationError(TerminalError):
    """Affects every record alike: bad credentials, unknown object or field, no access."""


class OrgMismatchError(SalesforceConfigurationError):
    """The config file is valid but does not fit the org (or the network) it names, found at
    run time: a mapped field the object does not have, a login URL whose host does not
    resolve. ``key`` is the config key to change, e.g. ``streams[0] ("contacts").fields.Foo``
    or ``salesforce.login_url``; the CLI exits 2 for it, as for a bad file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.detail = message


class RequestPayloadError(TerminalError):
    """A whole request refused for a value in one of its records (a 400 such as
    JSON_PARSER_ERROR "Cannot deserialize instance of date from VALUE_STRING value x").

    Sent again it fails again, so it is terminal for the request; without that record the
    rest goes through, so the export core splits the request to find the record. ``code``
    and ``detail`` are Salesforce's errorCode and message; ``culprit`` is the index of the
    record in the request when Salesforce's answer pins it down (its location and value
    both point there), else None.
    """

    def __init__(self, message: str, *, code: str, detail: str, culprit: int | None = None):
        super().__init__(message)
        self.code = code
        self.detail = detail
        self.culprit = culprit


class SourceError(TerminalError):
    """The source table or query cannot be read as configured."""


class SourceMissingError(SourceError):
    """What a stream names is not there: its SQLite file (``setting = "source_url"``), its
    table (``"table"``), or columns (``columns`` maps each to its problem)."""

    def __init__(
        self, message: str, *, setting: str | None = None, columns: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.setting = setting
        self.columns = dict(columns or {})


class BulkJobTimeout(TransientError):
    """A Bulk API 2.0 job was not finished within ``[export] bulk_poll_timeout_seconds``. No
    record failed: the job stays in bulk_jobs, and the next run resumes polling it."""


class BulkUploadRepeated(TerminalError):
    """Salesforce refused to close a Bulk API 2.0 job because it holds more than one upload:
    a retried upload whose first attempt had landed (the connection dropped after the org
    took it). The job can only be aborted; its rows go again in a new job."""


class BulkJobFailed(TerminalError):
    """Salesforce ended a Bulk API 2.0 job in Failed or Aborted, with its errorMessage. The
    job's rows were not acknowledged: the next run sends them again, in a new job."""
