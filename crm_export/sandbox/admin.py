"""The admin API under /_sandbox: inspect records and activity, change faults and the org.

It needs no Salesforce token (the server only listens on 127.0.0.1) and is never faulted,
counted or limited.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from werkzeug.wrappers import Request, Response

from crm_export.sandbox.dml import sf_datetime
from crm_export.sandbox.faults import FaultsError
from crm_export.sandbox.ids import to_18
from crm_export.sandbox.org import OrgError
from crm_export.sandbox.state import SandboxState

JSON_TYPE = "application/json;charset=UTF-8"


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, indent=1), status=status, content_type=JSON_TYPE)


def _error(message: str, problems: list[str] | None = None, status: int = 400) -> Response:
    return _json({"error": message, "problems": problems or []}, status)


def _body(request: Request) -> Any:
    return json.loads(request.get_data() or b"null")


def _since(request: Request) -> int:
    try:
        return int(request.args.get("since", "0"))
    except ValueError:
        return 0


def _limit(request: Request) -> int | None:
    """``?limit=N``: at most N entries (None: all). Not a whole number >= 0 is a 400."""
    value = request.args.get("limit")
    if value is None:
        return None
    if not value.isdigit():
        raise _BadQuery(f"limit must be a whole number >= 0, got {value!r}")
    return int(value)


class _BadQuery(Exception):
    pass


def handle(
    state: SandboxState, request: Request, endpoint: str, args: Mapping[str, Any]
) -> Response:
    try:
        return _dispatch(state, request, endpoint, args)
    except json.JSONDecodeError as exc:
        return _error(f"the body is not valid JSON: {exc}")
    except OrgError as exc:
        return _error("invalid org", exc.problems)
    except FaultsError as exc:
        return _error("invalid faults", exc.problems)
    except _BadQuery as exc:
        return _error(str(exc))


def _dispatch(
    state: SandboxState, request: Request, endpoint: str, args: Mapping[str, Any]
) -> Response:
    method = request.method
    if endpoint == "admin_info":
        org = state.org
        client = org.default_client
        user = org.default_user
        return _json(
            {
                "base_url": state.base_url,
                "ca_path": state.ca_path,
                "org": org.name,
                "org_id": org.org_id,
                "client_id": client.client_id if client else None,
                "client_secret": client.client_secret if client else None,
                "username": user.username if user else None,
                "password": user.password if user else None,
                "data": str(state.store.path) if state.store.path else None,
            }
        )
    if endpoint == "admin_records":
        sobject = args.get("sobject") or request.args.get("sobject")
        if method == "POST" and sobject:
            return _seed(state, sobject, _body(request))
        limit = _limit(request)
        if sobject:
            sobj = state.org.sobject(sobject)
            return _json(state.store.all(sobj.name if sobj else sobject)[:limit])
        return _json({name: state.store.all(name)[:limit] for name in state.store.sobjects()})
    if endpoint == "admin_counters":
        counters = state.activity.snapshot(state.faults.config.daily_api_limit)
        stored = {name: state.store.count(name) for name in state.store.sobjects()}
        return _json({**counters, "stored": stored})
    if endpoint == "admin_writes":
        return _json(state.activity.writes(_since(request)))
    if endpoint == "admin_rejections":
        rejections = state.activity.rejections(_since(request))
        limit = _limit(request)
        # The newest ones: the log's tail.
        return _json(rejections if limit is None else rejections[len(rejections) - limit :])
    if endpoint == "admin_jobs":
        return _json([job.info() for job in state.jobs.all()])
    if endpoint == "admin_faults":
        if method == "PUT":
            body = _body(request)
            if not isinstance(body, dict):
                return _error("PUT /_sandbox/faults takes a JSON object of options to change")
            state.faults.update(body)
        elif method == "DELETE":
            state.faults.replace({})
        return _json(state.faults.describe())
    if endpoint == "admin_org":
        if method in {"PUT", "PATCH"}:
            body = _body(request)
            if not isinstance(body, dict):
                return _error(f"{method} /_sandbox/org takes a JSON object")
            if method == "PUT":
                state.replace_org(body)
            else:
                state.patch_org(body)
        return _json(state.org.raw)
    if endpoint == "admin_reset":
        state.reset()
        return _json({"reset": True})
    return _error("no such admin endpoint", status=404)


def _seed(state: SandboxState, sobject: str, body: Any) -> Response:
    """Insert records as they are, skipping every rule: for setting up a scenario."""
    sobj = state.org.sobject(sobject)
    if sobj is None:
        return _error(f"no object '{sobject}' in the org", status=404)
    records = body.get("records") if isinstance(body, dict) else body
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        return _error("POST /_sandbox/records/{sobject} takes a list of records")
    prepared = []
    now = sf_datetime()
    for record in records:
        row: dict[str, Any] = {}
        unknown = []
        for key, value in record.items():
            fdef = sobj.field(key)
            if fdef is None:
                unknown.append(key)
            elif key != "attributes":
                row[fdef.name] = value
        unknown = [key for key in unknown if key != "attributes"]
        if unknown:
            return _error(f"no such fields on {sobj.name}: {', '.join(unknown)}")
        row["Id"] = to_18(str(row["Id"])) if row.get("Id") else state.store.next_id(sobj.key_prefix)
        for stamp in ("CreatedDate", "LastModifiedDate", "SystemModstamp"):
            row.setdefault(stamp, now)
        prepared.append(row)
    state.store.insert_raw(sobj.name, prepared)
    return _json({"ids": [row["Id"] for row in prepared]}, 201)
