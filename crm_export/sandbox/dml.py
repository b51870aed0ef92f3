"""Saving one record the way the org would: checks in Salesforce's order, then the write.

Order: match by external id → injected row lock → field permissions → values (type,
length, email, picklist) → lookups → required fields → before triggers → validation
rules → unique fields → after triggers → write. The first step that finds problems
decides the record's errors (validation rules report every rule that fired).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from crm_export.sandbox.faults import FaultInjector
from crm_export.sandbox.ids import looks_like_id, to_18
from crm_export.sandbox.org import TEXT_TYPES, FieldDef, OrgModel, SObjectDef
from crm_export.sandbox.storage import Record, RecordStore, Transaction

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class RecordError:
    status_code: str
    message: str
    fields: tuple[str, ...] = ()

    def result_json(self) -> dict[str, Any]:
        """As in a per-record result (``statusCode``)."""
        return {
            "statusCode": self.status_code,
            "message": self.message,
            "fields": list(self.fields),
        }

    def request_json(self) -> dict[str, Any]:
        """As in a request-level error array (``errorCode``)."""
        return {"message": self.message, "errorCode": self.status_code, "fields": list(self.fields)}

    def bulk_text(self) -> str:
        """The Bulk 2.0 ``sf__Error`` cell: ``CODE:message:fields --``."""
        fields = f"{', '.join(self.fields)} --" if self.fields else "--"
        return f"{self.status_code}:{self.message}:{fields}"


ROLLED_BACK = RecordError(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using "
    "AllOrNone header",
)


@dataclass(frozen=True)
class SaveResult:
    success: bool
    id: str | None = None
    created: bool | None = None
    errors: tuple[RecordError, ...] = ()
    # Ids of every record the external id matched, when it matched more than one.
    matches: tuple[str, ...] = ()
    # The injected fault that caused the failure, if any.
    fault: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.success:
            return {"id": self.id, "success": True, "errors": [], "created": self.created}
        return {"success": False, "errors": [e.result_json() for e in self.errors]}


def failure(code: str, message: str, *fields: str) -> SaveResult:
    return SaveResult(False, errors=(RecordError(code, message, tuple(fields)),))


class RequestError(Exception):
    """A request-level error: an HTTP status and a JSON array body with ``errorCode``."""

    def __init__(
        self, status: int, code: str, message: str, fields: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    def body(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            item["fields"] = self.fields
        return [item]


def not_found() -> RequestError:
    return RequestError(404, "NOT_FOUND", "The requested resource does not exist")


@dataclass(frozen=True)
class ByExternalId:
    """A lookup given as the parent's external id instead of its Salesforce id."""

    target: SObjectDef
    field: FieldDef
    value: Any


def json_text(value: Any) -> str:
    """A JSON value as Salesforce prints it in a message: ``true``, ``null``, never a repr."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sf_datetime(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


@dataclass(frozen=True)
class BadForeignKey:
    """A nested parent reference that Salesforce rejects for this record (not the request)."""

    error: RecordError


def relationship_column(
    org: OrgModel, sobj: SObjectDef, relationship: str, target_field: str
) -> tuple[FieldDef, SObjectDef, FieldDef]:
    """Resolve ``Account`` + ``External_Id__c`` to (AccountId, Account, External_Id__c)."""
    ref = sobj.relationship(relationship)
    single = ref is not None and len(ref.reference_to) == 1
    target = org.sobject(ref.reference_to[0]) if ref is not None and single else None
    if ref is None or target is None:
        raise RequestError(
            400, "INVALID_FIELD", f"No such column '{relationship}' on sobject of type {sobj.name}"
        )
    via = target.field(target_field)
    if via is None or not (via.external_id or via.name == "Id"):
        raise RequestError(
            400,
            "INVALID_FIELD",
            f"Field name provided, {target_field} is not an External ID or indexed field "
            f"for {target.name}",
        )
    return ref, target, via


def _same_key(stored: Any, wanted: Any, case_sensitive: bool) -> bool:
    if isinstance(stored, str) and isinstance(wanted, str) and not case_sensitive:
        return stored.casefold() == wanted.casefold()
    return bool(stored == wanted)


# The per-record type error: Bulk 2.0 CSV cells (text) and data imports only. A JSON value of
# the wrong type never gets this far in REST: the parser refuses the request (``unreadable``).
WRONG_TYPE = "INVALID_TYPE_ON_FIELD_IN_RECORD"
_NUMBER_TYPES = frozenset({"int", "double", "currency", "percent"})
_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Unreadable:
    """A JSON value Salesforce's parser cannot read as its field's type."""

    type_name: str  # the field's type, as describe names it
    token: str  # the JSON token, as Jackson names it: VALUE_STRING, START_ARRAY...
    text: str

    def message(self, line: int, column: int) -> str:
        where = f"[line:{line}, column:{column}]"
        if self.token == "START_ARRAY":
            return f"Cannot deserialize instance of {self.type_name} from START_ARRAY value {where}"
        return (
            f"Cannot deserialize instance of {self.type_name} from {self.token} value "
            f"{self.text} or request may be missing a required field at {where}"
        )


def unreadable(fdef: FieldDef, value: Any) -> Unreadable | None:
    """Why Salesforce's JSON parser cannot read ``value`` as a ``fdef``, or None if it can.

    The parser reads every value by its field's type before any record is processed, so one
    it cannot read fails the whole request (docs/sandbox.md says what is read as what).
    """
    if value is None or isinstance(value, ByExternalId):
        return None
    token, text = _json_token(value)
    problem = Unreadable(fdef.type, token, text)
    if token.startswith("START_"):
        return problem
    if fdef.type in TEXT_TYPES or fdef.type in {"reference", "id"} or value == "":
        return None
    if isinstance(value, str):
        # Stricter than CSV: a checkbox reads only true and false, a number only digits.
        if fdef.type == "boolean" and value not in {"true", "false"}:
            return problem
        if fdef.type in _NUMBER_TYPES and not _NUMBER_TEXT.fullmatch(value.strip()):
            return problem
    _, error = coerce(fdef, value)
    return problem if error is not None and error.status_code == WRONG_TYPE else None


def _json_token(value: Any) -> tuple[str, str]:
    if isinstance(value, bool):
        return ("VALUE_TRUE", "true") if value else ("VALUE_FALSE", "false")
    if isinstance(value, int):
        return "VALUE_NUMBER_INT", str(value)
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT", repr(value)
    if isinstance(value, Mapping):
        return "START_OBJECT", "{"
    if isinstance(value, list):
        return "START_ARRAY", "["
    return "VALUE_STRING", str(value)


def coerce(fdef: FieldDef, value: Any) -> tuple[Any, RecordError | None]:
    """The stored form of ``value`` for ``fdef``, or the error Salesforce would give."""
    if value is None or (isinstance(value, str) and value == ""):
        # Salesforce stores an empty string as null.
        return (False if fdef.type == "boolean" else None), None
    if isinstance(value, ByExternalId):
        return value, None
    wrong_type = RecordError(
        WRONG_TYPE,
        f"{fdef.label}: value not of required type: {json_text(value)}",
        (fdef.name,),
    )
    ftype = fdef.type
    if ftype in TEXT_TYPES or ftype == "reference":
        if isinstance(value, Mapping | list):
            return None, wrong_type
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if ftype == "reference":
            return text, None
        if fdef.length is not None and len(text) > fdef.length:
            return None, RecordError(
                "STRING_TOO_LONG",
                f"{fdef.label}: data value too large: {text} (max length={fdef.length})",
                (fdef.name,),
            )
        if ftype == "email" and not _EMAIL_RE.match(text):
            return None, RecordError(
                "INVALID_EMAIL_ADDRESS",
                f"{fdef.label}: invalid email address: {text}",
                (fdef.name,),
            )
        if fdef.restricted and fdef.type == "picklist" and text not in fdef.values:
            return None, RecordError(
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                f"{fdef.label}: bad value for restricted picklist field: {text}",
                (fdef.name,),
            )
        return text, None
    if ftype == "boolean":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0"}:
            return value.strip().lower() in {"true", "1"}, None
        return None, wrong_type
    if ftype == "int":
        if isinstance(value, bool):
            return None, wrong_type
        if isinstance(value, int):
            return value, None
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value), None
        return None, wrong_type
    if ftype in {"double", "currency", "percent"}:
        if isinstance(value, bool):
            return None, wrong_type
        if isinstance(value, int | float):
            return float(value), None
        if isinstance(value, str):
            try:
                return float(value.strip()), None
            except ValueError:
                return None, wrong_type
        return None, wrong_type
    if ftype == "date":
        if isinstance(value, str) and _DATE_RE.match(value):
            try:
                return date.fromisoformat(value).isoformat(), None
            except ValueError:
                return None, wrong_type
        return None, wrong_type
    if ftype == "datetime":
        if isinstance(value, str):
            try:
                text = value.strip().replace("Z", "+00:00")
                text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text)
                moment = datetime.fromisoformat(text)
            except ValueError:
                return None, wrong_type
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return sf_datetime(moment.astimezone(UTC)), None
        return None, wrong_type
    return None, wrong_type


@dataclass
class Saver:
    """Saves records of one object inside one transaction."""

    org: OrgModel
    sobj: SObjectDef
    tx: Transaction
    faults: FaultInjector | None = None
    now: str = field(default_factory=sf_datetime)

    @property
    def store(self) -> RecordStore:
        return self.tx.store

    def find_matches(self, match_field: FieldDef, value: Any) -> list[Record]:
        if match_field.name == "Id":
            record_id = to_18(str(value))
            record = self.store.get(self.sobj.name, record_id)
            system = [r for r in self.org.system_records(self.sobj.name) if r["Id"] == record_id]
            return [record] if record is not None else system
        return self.store.find(
            self.sobj.name, match_field.name, value, case_sensitive=match_field.case_sensitive
        )

    def save(
        self,
        values: dict[str, Any],
        *,
        operation: str,
        match_field: FieldDef | None = None,
        match_value: Any = None,
    ) -> SaveResult:
        """Save one record; ``operation`` is insert, update or upsert."""
        sobj = self.sobj
        existing: Record | None = None
        if operation in {"update", "upsert"}:
            assert match_field is not None
            blank = match_value is None or match_value == ""
            if match_field.name == "Id":
                if blank and operation == "update":
                    return failure("MISSING_ARGUMENT", "Id not specified in an update call")
                if not blank:
                    text = str(match_value)
                    if not looks_like_id(text):
                        return failure(
                            "MALFORMED_ID",
                            f"{sobj.label} ID: id value of incorrect type: {text}",
                            "Id",
                        )
                    matches = self.find_matches(match_field, text)
                    if not matches:
                        return failure("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
                    existing = matches[0]
            else:
                if blank:
                    return failure("MISSING_ARGUMENT", f"{match_field.name} not specified")
                matches = self.find_matches(match_field, match_value)
                if len(matches) > 1:
                    ids = tuple(str(m["Id"]) for m in matches)
                    # Salesforce names the field by its label and lists the ids as Java does.
                    return SaveResult(
                        False,
                        errors=(
                            RecordError(
                                "DUPLICATE_EXTERNAL_ID",
                                f"{match_field.label}: more than one record found for external "
                                f"id field: [{', '.join(ids)}]",
                                (match_field.name,),
                            ),
                        ),
                        matches=ids,
                    )
                existing = matches[0] if matches else None
                values = {match_field.name: match_value, **values}
        created = existing is None
        if not (sobj.createable if created else sobj.updateable):
            # The system objects (User, Organization) are read-only for the integration user.
            verb = "inserted" if created else "updated"
            return failure(
                "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
                f"entity type cannot be {verb}: {sobj.label}",
            )

        faults = self.faults
        if faults is not None and faults.draw("lock_row", faults.config.lock_row_rate):
            locked_id = existing["Id"] if existing else self.store.peek_id(sobj.key_prefix)
            return SaveResult(
                False,
                errors=(
                    RecordError(
                        "UNABLE_TO_LOCK_ROW",
                        "unable to obtain exclusive access to this record or 1 records: "
                        + str(locked_id),
                    ),
                ),
                fault="lock_row",
            )

        denied = []
        for name in values:
            fdef = sobj.fields[name]
            if existing is not None and name == (match_field.name if match_field else None):
                continue
            if not (fdef.createable if created else fdef.updateable):
                denied.append(name)
        if denied:
            return failure(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(denied)}. Please check the security "
                "settings of this field and verify that it is read/write for your profile or "
                "permission set.",
                *denied,
            )

        coerced: dict[str, Any] = {}
        errors: list[RecordError] = []
        for name, raw in values.items():
            if isinstance(raw, BadForeignKey):
                coerced[name] = raw
                continue
            value, error = coerce(sobj.fields[name], raw)
            if error is not None:
                errors.append(error)
            coerced[name] = value
        if errors:
            return SaveResult(False, errors=tuple(errors))

        for name, value in coerced.items():
            fdef = sobj.fields[name]
            if fdef.type != "reference" or value is None:
                continue
            resolved, error = self._resolve_lookup(fdef, value)
            if error is not None:
                return SaveResult(False, errors=(error,))
            coerced[name] = resolved

        merged: Record = dict(existing) if existing else {}
        if created:
            for fdef in sobj.fields.values():
                if fdef.name not in coerced and fdef.default is not None:
                    merged[fdef.name] = coerce(fdef, fdef.default)[0]
                elif fdef.name not in coerced and fdef.type == "boolean":
                    merged[fdef.name] = False
        merged.update(coerced)

        missing = [
            f.name
            for f in sobj.fields.values()
            if f.required and (merged.get(f.name) is None or merged.get(f.name) == "")
        ]
        if missing:
            return failure(
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                *missing,
            )

        event = "insert" if created else "update"
        error_or_none = self._run_triggers("before", event, merged)
        if error_or_none is not None:
            return SaveResult(False, errors=(error_or_none,))

        fired = [
            RecordError(
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                rule.error_message,
                (rule.error_field,) if rule.error_field else (),
            )
            for rule in sobj.validation_rules
            if rule.active and rule.when(merged)
        ]
        if fired:
            return SaveResult(False, errors=tuple(fired))

        own_id = existing["Id"] if existing else None
        for fdef in sobj.fields.values():
            if not fdef.unique or merged.get(fdef.name) is None:
                continue
            clash = [
                r
                for r in self.store.find(
                    sobj.name, fdef.name, merged[fdef.name], case_sensitive=fdef.case_sensitive
                )
                if r["Id"] != own_id
            ]
            if clash:
                return failure(
                    "DUPLICATE_VALUE",
                    f"duplicate value found: {fdef.name} duplicates value on record with id: "
                    f"{clash[0]['Id']}",
                    fdef.name,
                )

        error_or_none = self._run_triggers("after", event, merged)
        if error_or_none is not None:
            return SaveResult(False, errors=(error_or_none,))

        record_id = own_id or self.store.next_id(sobj.key_prefix)
        merged["Id"] = record_id
        if created:
            merged["CreatedDate"] = self.now
        merged["LastModifiedDate"] = self.now
        merged["SystemModstamp"] = self.now
        self.tx.put(sobj.name, merged)
        return SaveResult(True, id=record_id, created=created)

    def delete(self, record_id: Any) -> SaveResult:
        text = str(record_id or "")
        if not text:
            return failure("MISSING_ARGUMENT", "Id not specified in a delete call")
        if not looks_like_id(text):
            return failure(
                "MALFORMED_ID", f"{self.sobj.label} ID: id value of incorrect type: {text}", "Id"
            )
        if not self.sobj.deletable:
            return failure(
                "INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id"
            )
        existing = self.store.get(self.sobj.name, to_18(text))
        if existing is None:
            return failure("ENTITY_IS_DELETED", "entity is deleted")
        self._delete_with_children(self.sobj.name, existing["Id"])
        return SaveResult(True, id=existing["Id"], created=False)

    def _delete_with_children(self, sobject: str, record_id: str) -> None:
        # As in Salesforce, deleting an account deletes its contacts, opportunities and tasks.
        self.tx.delete(sobject, record_id)
        for child in self.org.objects.values():
            for fdef in child.fields.values():
                if fdef.cascade_delete and sobject in fdef.reference_to:
                    for record in self.store.find(
                        child.name, fdef.name, record_id, case_sensitive=True
                    ):
                        self._delete_with_children(child.name, record["Id"])

    def _resolve_lookup(self, fdef: FieldDef, value: Any) -> tuple[Any, RecordError | None]:
        if isinstance(value, BadForeignKey):
            return None, value.error
        if isinstance(value, ByExternalId):
            if value.value is None or value.value == "":
                return None, None
            if value.field.name == "Id":
                return self._resolve_lookup(fdef, str(value.value))
            found = self.store.find(
                value.target.name,
                value.field.name,
                value.value,
                case_sensitive=value.field.case_sensitive,
            ) or [
                r
                for r in self.org.system_records(value.target.name)
                if _same_key(r.get(value.field.name), value.value, value.field.case_sensitive)
            ]
            if not found:
                # Salesforce names no field (REST and Bulk 2.0 alike): docs/sandbox.md.
                return None, RecordError(
                    "INVALID_FIELD",
                    f"Foreign key external ID: {json_text(value.value)} not found for field "
                    f"{value.field.name} in entity {value.target.name}",
                    (),
                )
            if len(found) > 1:
                return None, RecordError(
                    "DUPLICATE_EXTERNAL_ID",
                    f"Foreign key external ID: {json_text(value.value)} matched more than one "
                    f"{value.target.name} record",
                    (fdef.name,),
                )
            return found[0]["Id"], None
        text = str(value)
        if not looks_like_id(text):
            return None, RecordError(
                "MALFORMED_ID", f"{fdef.label}: id value of incorrect type: {text}", (fdef.name,)
            )
        record_id = to_18(text)
        targets = [self.org.sobject(name) for name in fdef.reference_to]
        for target in targets:
            if target is None or not record_id.startswith(target.key_prefix):
                continue
            if self.store.get(target.name, record_id) is not None or any(
                r["Id"] == record_id for r in self.org.system_records(target.name)
            ):
                return record_id, None
        return None, RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")

    def _run_triggers(self, timing: str, event: str, record: Record) -> RecordError | None:
        for trigger in self.sobj.triggers:
            if not (trigger.active and trigger.timing == timing and event in trigger.events):
                continue
            if trigger.when(record):
                moment = f"{timing.capitalize()}{event.capitalize()}"
                return RecordError(
                    "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
                    f"{trigger.name}: execution of {moment} caused by: {trigger.exception}",
                )
        return None
