"""Creating, updating and deleting records over REST: ``POST /sobjects/{O}`` and the sObject
Collections ``POST``/``PATCH``/``DELETE /composite/sobjects`` (allOrNone as documented).

Upserts by external id live in rest.py; every write goes through a
:class:`~crm_export.sandbox.dml.Saver`, so the org's rules apply the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from werkzeug.wrappers import Response

from crm_export.sandbox.dml import ROLLED_BACK, RequestError, Saver, SaveResult, failure
from crm_export.sandbox.ids import checksum_suffix, looks_like_id
from crm_export.sandbox.org import SObjectDef
from crm_export.sandbox.payload import parse_payload
from crm_export.sandbox.rest import (
    MAX_COLLECTION_RECORDS,
    Call,
    json_response,
    refuse_unreadable,
    saver_for,
    sobject_or_404,
)
from crm_export.sandbox.storage import Transaction

_TOO_MANY = RequestError(
    400,
    "EXCEEDED_ID_LIMIT",
    "record limit reached. cannot submit more than 200 records into this call",
)


def _plain(result: SaveResult) -> dict[str, Any]:
    """A SaveResult or DeleteResult: like an UpsertResult, without ``created``."""
    body = result.as_json()
    body.pop("created", None)
    return body


def create(call: Call, sobject: str) -> Response:
    """``POST /sobjects/{O}``: 201 with the new id, or 400 with the record's errors."""
    sobj = sobject_or_404(call, sobject)
    body = call.json_body()
    if not isinstance(body, dict):
        raise RequestError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    # The parser reads every value by its field's type first, as for an upsert.
    refuse_unreadable(call, sobj, body, [])
    state = call.state
    with state.store.transaction() as tx:
        result = _insert(call, {}, sobj, tx, body)
        _log(call, tx, result, sobj, body, "create")
    state.publish(tx)
    if not result.success:
        return json_response([e.request_json() for e in result.errors], 400)
    return json_response(_plain(result), 201)


def _insert(
    call: Call, savers: dict[str, Saver], sobj: SObjectDef, tx: Transaction, record: Any
) -> SaveResult:
    values = parse_payload(call.state.org, sobj, record)
    if "Id" in values:
        return failure(
            "INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", "Id"
        )
    saver = savers.setdefault(sobj.name, saver_for(call, sobj, tx))
    return saver.save(values, operation="insert")


def _update(
    call: Call, savers: dict[str, Saver], sobj: SObjectDef, tx: Transaction, record: Any
) -> SaveResult:
    values = parse_payload(call.state.org, sobj, record)
    record_id = values.pop("Id", None)
    saver = savers.setdefault(sobj.name, saver_for(call, sobj, tx))
    return saver.save(
        values, operation="update", match_field=sobj.fields["Id"], match_value=record_id
    )


def composite_create(call: Call) -> Response:
    """``POST /composite/sobjects``: records of any types, each its own SaveResult."""
    return _collection(call, _insert, "composite_create")


def composite_update(call: Call) -> Response:
    """``PATCH /composite/sobjects``: records by Id, each its own SaveResult."""
    return _collection(call, _update, "composite_update")


def _collection(
    call: Call,
    save: Callable[[Call, dict[str, Saver], SObjectDef, Transaction, Any], SaveResult],
    endpoint: str,
) -> Response:
    body = call.json_body()
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise RequestError(400, "JSON_PARSER_ERROR", "The request body must have a 'records' list")
    records = body["records"]
    if len(records) > MAX_COLLECTION_RECORDS:
        raise _TOO_MANY
    org = call.state.org
    types: list[SObjectDef] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise RequestError(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
        attributes = record.get("attributes")
        type_name = attributes.get("type") if isinstance(attributes, dict) else None
        if not type_name:
            raise RequestError(400, "INVALID_TYPE", "Must send a concrete entity type.")
        sobj = org.sobject(str(type_name))
        if sobj is None:
            raise RequestError(400, "INVALID_TYPE", f"sObject type '{type_name}' is not supported.")
        refuse_unreadable(call, sobj, record, ["records", index])
        types.append(sobj)
    state = call.state
    results: list[SaveResult] = []
    with state.store.transaction() as tx:
        savers: dict[str, Saver] = {}
        for sobj, record in zip(types, records, strict=True):
            result = save(call, savers, sobj, tx, record)
            results.append(result)
            _log(call, tx, result, sobj, record, endpoint)
        if bool(body.get("allOrNone", False)) and not all(r.success for r in results):
            tx.rollback()
            results = _rolled_back(call, tx, results, types, records, endpoint)
    state.publish(tx)
    return json_response([_plain(r) for r in results])


def _rolled_back(
    call: Call,
    tx: Transaction,
    results: list[SaveResult],
    types: list[SObjectDef],
    payloads: list[Any],
    endpoint: str,
) -> list[SaveResult]:
    # As the AllOrNoneHeader documents: the failed records keep their errors, every other
    # record reports ALL_OR_NONE_OPERATION_ROLLED_BACK.
    out = []
    for result, sobj, payload in zip(results, types, payloads, strict=True):
        if result.success:
            result = SaveResult(False, errors=(ROLLED_BACK,))
            _log(call, tx, result, sobj, payload, endpoint)
        out.append(result)
    return out


def composite_delete(call: Call) -> Response:
    """``DELETE /composite/sobjects?ids=...&allOrNone=...``: one DeleteResult per id."""
    ids = [i.strip() for i in call.request.args.get("ids", "").split(",") if i.strip()]
    if not ids:
        raise RequestError(400, "MISSING_ARGUMENT", "ids parameter is required")
    if len(ids) > MAX_COLLECTION_RECORDS:
        raise _TOO_MANY
    all_or_none = call.request.args.get("allOrNone", "false").lower() == "true"
    state = call.state
    org = state.org
    results: list[SaveResult] = []
    targets: list[SObjectDef | None] = []
    with state.store.transaction() as tx:
        savers: dict[str, Saver] = {}
        for record_id in ids:
            sobj = org.object_for_prefix(record_id) if _well_formed(record_id) else None
            targets.append(sobj)
            if sobj is None:
                result = failure("MALFORMED_ID", f"malformed id {record_id}")
            else:
                saver = savers.setdefault(sobj.name, saver_for(call, sobj, tx))
                result = saver.delete(record_id)
            results.append(result)
            if sobj is not None:
                _log(call, tx, result, sobj, {"Id": record_id}, "composite_delete", "deleted")
        if all_or_none and not all(r.success for r in results):
            tx.rollback()
            results = [
                SaveResult(False, errors=(ROLLED_BACK,)) if r.success else r for r in results
            ]
    state.publish(tx)
    return json_response([_plain(r) for r in results])


def _well_formed(record_id: str) -> bool:
    # An 18-character id carries a checksum of its first 15; a wrong one is malformed.
    if not looks_like_id(record_id):
        return False
    return len(record_id) == 15 or record_id[15:] == checksum_suffix(record_id[:15])


def _log(
    call: Call,
    tx: Transaction,
    result: SaveResult,
    sobj: SObjectDef,
    payload: Any,
    endpoint: str,
    action: str | None = None,
) -> None:
    record_id = payload.get("Id") if isinstance(payload, dict) else None
    call.state.log_result(
        tx,
        result,
        sobject=sobj.name,
        external_id_field="Id",
        external_id=record_id,
        endpoint=endpoint,
        request=call.number,
        payload=payload,
        action=action,
    )
