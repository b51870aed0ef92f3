"""Which API versions the org serves, and what it answers for the others.

Served: ``oldest_api_version`` to ``newest_api_version`` (fault options; 31.0 to 66.0 by
default). Older ones are retired: REST answers 410 GONE and SOAP 500 UNSUPPORTED_API_VERSION.
Newer ones do not exist yet on this org: REST answers 404 NOT_FOUND. Sources in
docs/sandbox.md, "API versions".
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Response

JSON_TYPE = "application/json;charset=UTF-8"
# 31.0 was Summer '14; three releases a year since: Winter, Spring, Summer.
_FIRST, _FIRST_YEAR = 31, 14
_SEASONS = ("Summer", "Winter", "Spring")
# The 410 body's wording is not documented; this is Salesforce's own description of a 410 in
# its status-code tables.
GONE_MESSAGE = (
    "The requested resource has been retired or removed. Delete or update any references to "
    "the resource."
)


def _number(version: str) -> float:
    return float(version)


def label(version: str) -> str:
    """The release name of an API version: 64.0 is "Summer '25"."""
    n = int(_number(version)) - _FIRST
    return f"{_SEASONS[n % 3]} '{_FIRST_YEAR + (n + 2) // 3:02d}"


def served(oldest: str, newest: str) -> list[str]:
    return [f"{v}.0" for v in range(int(_number(oldest)), int(_number(newest)) + 1)]


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type=JSON_TYPE)


def versions_answer(oldest: str, newest: str) -> Response:
    """``GET /services/data``: every served version, oldest first."""
    return _json(
        [
            {"label": label(v), "url": f"/services/data/v{v}", "version": v}
            for v in served(oldest, newest)
        ]
    )


def refusal(version: str, oldest: str, newest: str) -> Response | None:
    """The REST answer for a version the org does not serve, or None if it serves it."""
    if _number(version) < _number(oldest):
        return _json([{"errorCode": "GONE", "message": GONE_MESSAGE}], 410)
    if _number(version) > _number(newest):
        return _json(
            [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}], 404
        )
    return None


def soap_unsupported_message(version: str, oldest: str) -> str | None:
    """The SOAP login fault message for a retired version, or None if it is served."""
    if _number(version) >= _number(oldest):
        return None
    return (
        f"The API version that was specified ({version}) is below the minimum supported "
        f"({oldest}). Change the version number and run the request again."
    )
