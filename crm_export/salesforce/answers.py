"""Reading Salesforce's answers: its errors in an operator's words, which record a refused
request is about, Retry-After, and per-record results."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from crm_export.errors import (
    NetworkError,
    RequestLimitError,
    SalesforceConfigurationError,
    ServerError,
)
from crm_export.ports import RecordError, UpsertResult

# The kind of trouble an exhausted retry budget means, in an operator's words.
_WHAT_FAILED: tuple[tuple[type[BaseException], str], ...] = (
    (ServerError, "Salesforce was unavailable (an outage, maintenance or overload)"),
    (NetworkError, "Salesforce could not be reached (a network problem)"),
    (RequestLimitError, "Salesforce kept refusing calls over the org's API request limits"),
)


def what_failed(cause: BaseException | None) -> str:
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


def version_problem(version: str, served: Sequence[str]) -> str:
    ordered = sorted(served, key=float)
    span = f"it serves {ordered[0]} to {ordered[-1]}"
    if float(version) < float(ordered[0]):
        return f"{version} is retired by this org; {span}"
    if float(version) > float(ordered[-1]):
        return f"{version} is not served by this org yet; {span}"
    return f"{version} is not served by this org; it serves {', '.join(ordered)}"


def json_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def first_error(content: Any) -> tuple[str | None, str]:
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


def retry_after_of(response: requests.Response | None) -> float | None:
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


def upsert_result(item: Mapping[str, Any]) -> UpsertResult:
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
