"""Handlers of the Salesforce-facing endpoints: OAuth, SOAP login, REST and Bulk 2.0."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from crm_export.sandbox.auth import (
    OAuthError,
    SoapLoginError,
    Token,
    authenticate,
    soap_credentials,
    soap_fault,
    soap_login_response,
    soap_user,
    token_response,
)
from crm_export.sandbox.describe import describe_object, object_summary
from crm_export.sandbox.dml import (
    ROLLED_BACK,
    RequestError,
    Saver,
    SaveResult,
    failure,
    json_text,
    not_found,
    unreadable,
)
from crm_export.sandbox.identity import identity as identity_of
from crm_export.sandbox.identity import userinfo as userinfo_of
from crm_export.sandbox.identity import version_resources as version_resources_of
from crm_export.sandbox.ids import to_18
from crm_export.sandbox.org import FieldDef, SObjectDef
from crm_export.sandbox.payload import parse_payload
from crm_export.sandbox.soql import column_metadata, run_query
from crm_export.sandbox.state import SandboxState
from crm_export.sandbox.storage import Transaction

JSON_TYPE = "application/json;charset=UTF-8"
MAX_COLLECTION_RECORDS = 200


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type=JSON_TYPE)


@dataclass
class Call:
    state: SandboxState
    request: Request
    version: str
    token: Token | None
    number: int

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.get_data() or b"null")
        except ValueError as exc:
            raise RequestError(400, "JSON_PARSER_ERROR", str(exc)) from exc


def refuse_unreadable(
    call: Call, sobj: SObjectDef, record: Mapping[str, Any], path: Sequence[str | int]
) -> None:
    """Fail the request, as Salesforce's JSON parser does, at the first value of ``record``
    (found at ``path`` in the body) that it cannot read as its field's type.

    Keys are read in the order sent; at the first that names no field, ``parse_payload``
    gives the request's error instead.
    """
    for key, value in record.items():
        if key == "attributes":
            continue
        fdef = sobj.field(key)
        if fdef is None:
            if sobj.relationship(key) is None:
                return
            continue
        problem = unreadable(fdef, value)
        if problem is not None:
            text = call.request.get_data(as_text=True)
            line, column = entry_location(text, [*path, key])
            raise RequestError(400, "JSON_PARSER_ERROR", problem.message(line, column))


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def entry_location(text: str, path: Sequence[str | int]) -> tuple[int, int]:
    """[line, column] (from 1) that Salesforce reports for the value at ``path`` in ``text``.

    Its parser (Jackson 1.x) marks where the value's entry begins: the comma before its key,
    or the key itself when it comes first in its object (docs/sandbox.md).
    """
    decoder = json.JSONDecoder()

    def skip(at: int) -> int:
        match = _WHITESPACE.match(text, at)
        assert match is not None
        return match.end()

    pos = entry = skip(0)
    for step in path:
        pos += 1  # past the "{" or "["
        index = 0
        while True:
            pos = entry = skip(pos)
            if index:
                pos = skip(pos + 1)  # past the comma
            if isinstance(step, str):
                key, pos = decoder.raw_decode(text, pos)
                pos = skip(skip(pos) + 1)  # past the colon
                if key == step:
                    break
            elif index == step:
                break
            _, pos = decoder.raw_decode(text, pos)
            index += 1
    line = text.count("\n", 0, entry) + 1
    return line, entry - (text.rfind("\n", 0, entry) + 1) + 1


def sobject_or_404(call: Call, name: str) -> SObjectDef:
    sobj = call.state.org.sobject(name)
    if sobj is None:
        raise not_found()
    return sobj


def _external_id_field(sobj: SObjectDef, name: str) -> FieldDef:
    fdef = sobj.field(name)
    if fdef is None or not fdef.external_id:
        raise RequestError(
            404,
            "NOT_FOUND",
            f"Provided external ID field does not exist or is not accessible: {name}",
        )
    return fdef


# ---- login


def oauth_token(state: SandboxState, request: Request) -> Response:
    org = state.org
    try:
        user, client_id = authenticate(
            org, request.form.to_dict(), request.headers.get("Authorization"), state.base_url
        )
    except OAuthError as exc:
        return json_response(exc.body(), 400)
    token = state.tokens.issue(org, user, client_id)
    secret = org.clients[client_id].client_secret
    return json_response(token_response(org, token, state.base_url, secret))


def soap_login(state: SandboxState, request: Request, version: str) -> Response:
    org = state.org
    try:
        username, password = soap_credentials(request.get_data())
    except SoapLoginError as exc:
        return Response(soap_fault("INVALID_LOGIN", str(exc)), 500, content_type="text/xml")
    user = soap_user(org, username, password)
    if user is None:
        message = "Invalid username, password, security token; or user locked out."
        return Response(soap_fault("INVALID_LOGIN", message), 500, content_type="text/xml")
    token = state.tokens.issue(org, user, None)
    return Response(
        soap_login_response(org, token, state.base_url, version),
        200,
        content_type="text/xml;charset=UTF-8",
    )


# ---- REST


def limits(call: Call) -> Response:
    used = call.state.activity.api_used
    daily = call.state.faults.config.daily_api_limit
    return json_response(
        {
            "DailyApiRequests": {"Max": daily, "Remaining": max(0, daily - used)},
            "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
            "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
            "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
            "DataStorageMB": {"Max": 1024, "Remaining": 1024},
            "FileStorageMB": {"Max": 1024, "Remaining": 1024},
        }
    )


def describe_global(call: Call) -> Response:
    return json_response(
        {
            "encoding": "UTF-8",
            "maxBatchSize": 200,
            "sobjects": [object_summary(o, call.version) for o in call.state.org.objects.values()],
        }
    )


def sobject_info(call: Call, sobject: str) -> Response:
    """``GET /sobjects/{O}``: the object's summary (the sandbox keeps no recent items)."""
    sobj = sobject_or_404(call, sobject)
    return json_response({"objectDescribe": object_summary(sobj, call.version), "recentItems": []})


def describe(call: Call, sobject: str) -> Response:
    return json_response(
        describe_object(call.state.org, sobject_or_404(call, sobject), call.version)
    )


def query(call: Call) -> Response:
    soql = call.request.args.get("q")
    if not soql:
        raise RequestError(400, "MALFORMED_QUERY", "The 'q' parameter is required")
    if call.request.args.get("columns", "").lower() == "true":
        # What `sf data query` asks for to lay out its table (see soql.column_metadata).
        return json_response(column_metadata(call.state.org, soql))
    return json_response(run_query(call.state.org, call.state.store, soql, call.version))


# ---- who the token is


def version_resources(call: Call) -> Response:
    assert call.token is not None
    state = call.state
    return json_response(
        version_resources_of(state.base_url, state.org, call.token.user_id, call.version)
    )


def identity(call: Call, org_id: str, user_id: str) -> Response:
    assert call.token is not None
    state = call.state
    # A token reads only its own identity; the error codes of Salesforce's Identity URL.
    if to_18(org_id) != state.org.org_id:
        return Response("Wrong_Org", 403, content_type="text/plain;charset=UTF-8")
    if to_18(user_id) != call.token.user_id:
        return Response("Bad_Id", 404, content_type="text/plain;charset=UTF-8")
    return json_response(identity_of(state.base_url, state.org, call.token.user_id))


def userinfo(call: Call) -> Response:
    assert call.token is not None
    state = call.state
    return json_response(userinfo_of(state.base_url, state.org, call.token.user_id))


def get_record(call: Call, sobject: str, record_id: str) -> Response:
    sobj = sobject_or_404(call, sobject)
    record = call.state.store.get(sobj.name, to_18(record_id)) or next(
        (r for r in call.state.org.system_records(sobj.name) if r["Id"] == to_18(record_id)),
        None,
    )
    if record is None:
        raise not_found()
    return json_response(_with_attributes(sobj, record, call.version))


def _with_attributes(sobj: SObjectDef, record: dict[str, Any], version: str) -> dict[str, Any]:
    url = f"/services/data/v{version}/sobjects/{sobj.name}/{record['Id']}"
    return {"attributes": {"type": sobj.name, "url": url}, **record}


def get_by_external_id(call: Call, sobject: str, field: str, value: str) -> Response:
    sobj = sobject_or_404(call, sobject)
    fdef = _external_id_field(sobj, field)
    found = call.state.store.find(sobj.name, fdef.name, value, case_sensitive=fdef.case_sensitive)
    if not found:
        raise not_found()
    if len(found) > 1:
        return json_response([_record_url(sobj, r["Id"], call.version) for r in found], 300)
    return json_response(_with_attributes(sobj, found[0], call.version))


def _record_url(sobj: SObjectDef, record_id: str, version: str) -> str:
    return f"/services/data/v{version}/sobjects/{sobj.name}/{record_id}"


def single_upsert(call: Call, sobject: str, field: str, value: str) -> Response:
    state = call.state
    org = state.org
    sobj = sobject_or_404(call, sobject)
    fdef = _external_id_field(sobj, field)
    body = call.json_body()
    if not isinstance(body, dict):
        raise RequestError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    refuse_unreadable(call, sobj, body, [])
    values = parse_payload(org, sobj, body)
    if fdef.name in values and str(values.pop(fdef.name)) != value:
        raise RequestError(
            400,
            "INVALID_FIELD",
            f"The value of {fdef.name} in the body does not match the URL",
        )
    with state.store.transaction() as tx:
        saver = saver_for(call, sobj, tx)
        result = saver.save(values, operation="upsert", match_field=fdef, match_value=value)
        state.log_result(
            tx,
            result,
            sobject=sobj.name,
            external_id_field=fdef.name,
            external_id=value,
            endpoint="single_upsert",
            request=call.number,
            payload=body,
        )
    state.publish(tx)
    if result.matches and not result.fault:
        return json_response([_record_url(sobj, i, call.version) for i in result.matches], 300)
    if not result.success:
        return json_response([e.request_json() for e in result.errors], 400)
    return json_response(result.as_json(), 201 if result.created else 200)


def _lock_faults(call: Call) -> bool:
    return call.state.faults.applies_to(call.request.path)


def saver_for(call: Call, sobj: SObjectDef, tx: Transaction) -> Saver:
    faults = call.state.faults if _lock_faults(call) else None
    # Salesforce reports a parent that is not found as INVALID_FIELD (docs/sandbox.md).
    return Saver(call.state.org, sobj, tx, faults)


def composite_upsert(call: Call, sobject: str, field: str) -> Response:
    state = call.state
    org = state.org
    sobj = sobject_or_404(call, sobject)
    fdef = _external_id_field(sobj, field)
    body = call.json_body()
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise RequestError(400, "JSON_PARSER_ERROR", "The request body must have a 'records' list")
    records = body["records"]
    all_or_none = bool(body.get("allOrNone", False))
    if len(records) > MAX_COLLECTION_RECORDS:
        raise RequestError(
            400,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        )
    parsed: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise RequestError(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
        attributes = record.get("attributes")
        record_type = attributes.get("type") if isinstance(attributes, dict) else None
        if not record_type:
            raise RequestError(400, "INVALID_TYPE", "Must send a concrete entity type.")
        if str(record_type).lower() != sobj.name.lower():
            raise RequestError(
                400,
                "INVALID_TYPE",
                f"Record type {json_text(record_type)} does not match the type {sobj.name} of "
                "the request",
            )
        refuse_unreadable(call, sobj, record, ["records", index])
        parsed.append(parse_payload(org, sobj, record))

    keys = [_fold(values.get(fdef.name), fdef.case_sensitive) for values in parsed]
    repeated = {k for k in keys if k not in (None, "") and keys.count(k) > 1}

    results: list[SaveResult] = []
    match_values = [values.pop(fdef.name, None) for values in parsed]
    with state.store.transaction() as tx:
        saver = saver_for(call, sobj, tx)

        def log(result: SaveResult, match_value: Any, raw: Any) -> None:
            state.log_result(
                tx,
                result,
                sobject=sobj.name,
                external_id_field=fdef.name,
                external_id=match_value,
                endpoint="composite_upsert",
                request=call.number,
                payload=raw,
            )

        for values, key, match_value, raw in zip(parsed, keys, match_values, records, strict=True):
            if key in repeated:
                result = failure(
                    "DUPLICATE_VALUE",
                    f"Duplicate external id specified: {json_text(match_value)}",
                    fdef.name,
                )
            else:
                result = saver.save(
                    values, operation="upsert", match_field=fdef, match_value=match_value
                )
            results.append(result)
            log(result, match_value, raw)
        if all_or_none and not all(r.success for r in results):
            tx.rollback()
            for i, (match_value, raw) in enumerate(zip(match_values, records, strict=True)):
                if results[i].success:
                    results[i] = SaveResult(False, errors=(ROLLED_BACK,))
                    log(results[i], match_value, raw)
    state.publish(tx)
    return json_response([r.as_json() for r in results])


def _fold(value: Any, case_sensitive: bool) -> Any:
    if isinstance(value, str) and not case_sensitive:
        return value.casefold()
    return value


# ---- Bulk API 2.0


def bulk_create(call: Call) -> Response:
    state = call.state
    assert call.token is not None
    job_id = state.store.next_id("750")
    job = state.jobs.create(state.org, call.json_body(), job_id, call.token.user_id, call.version)
    return json_response(job.info())


def bulk_list(call: Call) -> Response:
    jobs = [job.info() for job in call.state.jobs.all()]
    return json_response({"done": True, "records": jobs, "nextRecordsUrl": None})


def bulk_get(call: Call, job_id: str) -> Response:
    return json_response(call.state.jobs.get(job_id).info())


def bulk_upload(call: Call, job_id: str) -> Response:
    call.state.jobs.upload(job_id, call.request.get_data())
    return Response(b"", status=201)


def bulk_state(call: Call, job_id: str) -> Response:
    state = call.state
    job = state.jobs.set_state(job_id, call.json_body(), state.faults.config.bulk_job_seconds)
    return json_response(job.info())


def bulk_delete(call: Call, job_id: str) -> Response:
    call.state.jobs.delete(job_id)
    return Response(b"", status=204)


def bulk_results(call: Call, job_id: str, kind: str) -> Response:
    text = call.state.jobs.results_csv(job_id, kind.lower())
    return Response(text, status=200, content_type="text/csv;charset=UTF-8")
