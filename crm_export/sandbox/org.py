"""The org model: connected apps, users, objects, fields, validation rules and triggers.

It is read from an org file (TOML) or an equivalent dict, and can be replaced or
merge-patched while the sandbox runs. Every problem in a file is reported at once.
See docs/sandbox.md for the format.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crm_export.sandbox import DEFAULT_ORG_PATH
from crm_export.sandbox.ids import make_id
from crm_export.sandbox.predicates import Predicate, PredicateError, compile_predicate, shown
from crm_export.sandbox.system_objects import SYSTEM_OBJECTS, read_only, system_records

TEXT_TYPES = frozenset(
    {"string", "textarea", "email", "phone", "url", "picklist", "multipicklist", "combobox"}
)
FIELD_TYPES = TEXT_TYPES | {
    "boolean",
    "int",
    "double",
    "currency",
    "percent",
    "date",
    "datetime",
    "reference",
    "id",
}
DEFAULT_LENGTHS = {"textarea": 32768, "phone": 40, "email": 80, "url": 255}
STANDARD_PREFIXES = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Opportunity": "006",
    "Lead": "00Q",
    "Case": "500",
    "Campaign": "701",
    "Task": "00T",
}
# Fields every object has; the integration user can read them but never write them.
SYSTEM_FIELDS = ("Id", "CreatedDate", "LastModifiedDate", "SystemModstamp")


class OrgError(Exception):
    """The org file or dict is invalid; ``problems`` lists every problem, each with its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid org:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class ClientApp:
    client_id: str
    client_secret: str
    run_as: str | None
    # PEM of the certificate or public key that verifies JWT bearer assertions.
    jwt_key_pem: str | None


@dataclass(frozen=True)
class User:
    username: str
    password: str
    security_token: str
    user_id: str


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    label: str
    length: int | None = None
    required: bool = False
    unique: bool = False
    external_id: bool = False
    case_sensitive: bool = False
    createable: bool = True
    updateable: bool = True
    # The objects a lookup may point to: one, or several for a polymorphic one (Task.WhoId).
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    values: tuple[str, ...] = ()
    restricted: bool = False
    default: Any = None
    # Can identify a record in an upsert besides Id and external ids (User.Username).
    id_lookup: bool = False
    # Deleting the parent deletes the records that point to it (Account -> Contacts).
    cascade_delete: bool = False

    @property
    def polymorphic(self) -> bool:
        return len(self.reference_to) > 1


@dataclass(frozen=True)
class ValidationRule:
    name: str
    error_message: str
    error_field: str | None
    when: Predicate
    active: bool = True


@dataclass(frozen=True)
class Trigger:
    name: str
    events: frozenset[str]
    timing: str
    exception: str
    when: Predicate
    active: bool = True


@dataclass(frozen=True)
class SObjectDef:
    name: str
    label: str
    label_plural: str
    key_prefix: str
    fields: dict[str, FieldDef]
    validation_rules: tuple[ValidationRule, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    # What the integration user may do with the object's records (the system objects are
    # read-only for it).
    createable: bool = True
    updateable: bool = True
    deletable: bool = True
    _by_lower: dict[str, str] = field(default_factory=dict, repr=False)
    _relationships: dict[str, str] = field(default_factory=dict, repr=False)

    def field(self, name: str) -> FieldDef | None:
        canonical = self._by_lower.get(name.lower())
        return self.fields[canonical] if canonical else None

    def relationship(self, name: str) -> FieldDef | None:
        """The reference field whose relationship name is ``name`` (``Account`` → AccountId)."""
        canonical = self._relationships.get(name.lower())
        return self.fields[canonical] if canonical else None

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")


@dataclass(frozen=True)
class OrgModel:
    name: str
    org_id: str
    clients: dict[str, ClientApp]
    users: dict[str, User]
    objects: dict[str, SObjectDef]
    # The source as a plain dict: what GET /_sandbox/org shows and PATCH merges into.
    raw: dict[str, Any]

    def sobject(self, name: str) -> SObjectDef | None:
        for obj in self.objects.values():
            if obj.name.lower() == name.lower():
                return obj
        return None

    def user(self, username: str) -> User | None:
        # Salesforce usernames are case-insensitive.
        for user in self.users.values():
            if user.username.lower() == username.lower():
                return user
        return None

    def object_for_prefix(self, record_id: str) -> SObjectDef | None:
        for obj in self.objects.values():
            if record_id.startswith(obj.key_prefix):
                return obj
        return None

    def system_records(self, sobject: str) -> list[dict[str, Any]]:
        """The records the org itself holds: its Organization row and one User per user."""
        return system_records(self, sobject)

    @property
    def default_client(self) -> ClientApp | None:
        return next(iter(self.clients.values()), None)

    @property
    def default_user(self) -> User | None:
        return next(iter(self.users.values()), None)


def default_label(name: str) -> str:
    base = name[:-3] if name.endswith("__c") else name
    base = base.replace("_", " ")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", base).strip()


def load_org_source(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """Read an org file, TOML text or dict into a plain dict (not yet validated).

    A ``str`` that names an existing file is read as one; any other ``str`` is TOML text.
    """
    if source is None:
        source = DEFAULT_ORG_PATH
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    text: str
    base_dir: Path | None = None
    # One line without TOML syntax can only be meant as a path, even if it does not exist.
    looks_like_path = "\n" not in source if isinstance(source, str) else True
    if isinstance(source, str) and looks_like_path:
        looks_like_path = Path(source).is_file() or not any(c in source for c in "=[")
    if isinstance(source, Path) or looks_like_path:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise OrgError([f"{path}: cannot read: {exc.strerror}"]) from exc
        base_dir = path.resolve().parent
    else:
        text = source
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OrgError([f"not valid TOML: {exc}"]) from exc
    if base_dir is not None:
        _inline_key_files(data, base_dir)
    return data


def _inline_key_files(data: dict[str, Any], base_dir: Path) -> None:
    # A key file path is relative to the org file; inline it so the dict stands alone.
    clients = data.get("clients")
    if not isinstance(clients, dict):
        return
    for spec in clients.values():
        if isinstance(spec, dict) and isinstance(spec.get("jwt_key_file"), str):
            key_path = base_dir / spec["jwt_key_file"]
            try:
                spec["jwt_public_key"] = key_path.read_text(encoding="utf-8")
            except OSError:
                continue  # parse_org reports the missing file
            del spec["jwt_key_file"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: tables merge, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def load_org(source: str | Path | Mapping[str, Any] | None = None) -> OrgModel:
    return parse_org(load_org_source(source))


def parse_org(data: Mapping[str, Any]) -> OrgModel:
    problems: list[str] = []
    raw = copy.deepcopy(dict(data))
    _check_keys(raw, {"org", "clients", "users", "objects"}, "", problems)

    org_table = _table(raw.get("org", {}), "org", problems)
    name = str(org_table.get("name", "crm-export sandbox org"))
    org_id = str(org_table.get("id", "00DSb0000000001EAA"))

    users: dict[str, User] = {}
    for i, (username, spec) in enumerate(_table(raw.get("users", {}), "users", problems).items()):
        where = f"users.{username}"
        spec = _table(spec, where, problems)
        _check_keys(spec, {"password", "security_token", "id"}, where, problems)
        if not isinstance(spec.get("password"), str):
            problems.append(f"{where}.password: required (a string)")
        users[username] = User(
            username=username,
            password=str(spec.get("password", "")),
            security_token=str(spec.get("security_token", "")),
            user_id=str(spec.get("id", make_id("005", i + 1))),
        )

    clients: dict[str, ClientApp] = {}
    for client_id, spec in _table(raw.get("clients", {}), "clients", problems).items():
        where = f"clients.{client_id}"
        spec = _table(spec, where, problems)
        _check_keys(
            spec,
            {"client_secret", "run_as", "jwt_public_key", "jwt_certificate", "jwt_key_file"},
            where,
            problems,
        )
        if not isinstance(spec.get("client_secret"), str):
            problems.append(f"{where}.client_secret: required (a string)")
        run_as = spec.get("run_as")
        if run_as is not None and not any(u.lower() == str(run_as).lower() for u in users):
            problems.append(f"{where}.run_as: no user {shown(run_as)} in [users]")
        if "jwt_key_file" in spec:
            problems.append(f"{where}.jwt_key_file: cannot read {shown(spec['jwt_key_file'])}")
        key_pem = spec.get("jwt_public_key") or spec.get("jwt_certificate")
        clients[client_id] = ClientApp(
            client_id=client_id,
            client_secret=str(spec.get("client_secret", "")),
            run_as=str(run_as) if run_as is not None else None,
            jwt_key_pem=str(key_pem) if key_pem else None,
        )

    objects: dict[str, SObjectDef] = {}
    object_specs = _table(raw.get("objects", {}), "objects", problems)
    custom_prefixes = (f"a{i:02d}" for i in range(100))
    for obj_name, spec in object_specs.items():
        if obj_name in SYSTEM_OBJECTS:
            problems.append(f"objects.{obj_name}: a system object; it cannot be defined")
            continue
        objects[obj_name] = _parse_object(obj_name, spec, custom_prefixes, problems)
    for obj_name, spec in SYSTEM_OBJECTS.items():
        objects[obj_name] = read_only(
            _parse_object(obj_name, copy.deepcopy(spec), custom_prefixes, problems)
        )
    for obj in objects.values():
        for fdef in obj.fields.values():
            for target in fdef.reference_to:
                if target not in objects:
                    problems.append(
                        f"objects.{obj.name}.fields.{fdef.name}.reference_to: "
                        f"no object {shown(target)}"
                    )
    prefixes = [o.key_prefix for o in objects.values()]
    for prefix in {p for p in prefixes if prefixes.count(p) > 1}:
        problems.append(f"objects: key_prefix {shown(prefix)} is used by more than one object")

    if problems:
        raise OrgError(problems)
    return OrgModel(name, org_id, clients, users, objects, raw)


def _parse_object(
    obj_name: str, spec: Any, custom_prefixes: Any, problems: list[str]
) -> SObjectDef:
    where = f"objects.{obj_name}"
    spec = _table(spec, where, problems)
    _check_keys(
        spec,
        {"label", "label_plural", "key_prefix", "fields", "validation_rules", "triggers"},
        where,
        problems,
    )
    key_prefix = spec.get("key_prefix") or STANDARD_PREFIXES.get(obj_name) or next(custom_prefixes)
    if not (isinstance(key_prefix, str) and re.fullmatch(r"[0-9A-Za-z]{3}", key_prefix)):
        problems.append(f"{where}.key_prefix: must be 3 letters or digits, got {shown(key_prefix)}")
        key_prefix = "a99"
    label = str(spec.get("label", default_label(obj_name)))

    fields: dict[str, FieldDef] = {
        "Id": FieldDef("Id", "id", f"{label} ID", length=18, createable=False, updateable=False),
    }
    for system in SYSTEM_FIELDS[1:]:
        fields[system] = FieldDef(
            system, "datetime", default_label(system), createable=False, updateable=False
        )
    relationships: dict[str, str] = {}
    for field_name, field_spec in _table(
        spec.get("fields", {}), f"{where}.fields", problems
    ).items():
        if field_name in SYSTEM_FIELDS:
            problems.append(f"{where}.fields.{field_name}: a system field; it cannot be defined")
            continue
        fdef = _parse_field(field_name, field_spec, f"{where}.fields.{field_name}", problems)
        fields[field_name] = fdef
        if fdef.relationship_name:
            relationships[fdef.relationship_name.lower()] = field_name
    by_lower = {name.lower(): name for name in fields}

    def resolve(name: str) -> str | None:
        return by_lower.get(name.lower())

    rules: list[ValidationRule] = []
    for rule_name, rule_spec in _table(
        spec.get("validation_rules", {}), f"{where}.validation_rules", problems
    ).items():
        rwhere = f"{where}.validation_rules.{rule_name}"
        rule_spec = _table(rule_spec, rwhere, problems)
        _check_keys(rule_spec, {"error_message", "error_field", "when", "active"}, rwhere, problems)
        predicate = _predicate(rule_spec.get("when"), resolve, f"{rwhere}.when", problems)
        error_field = rule_spec.get("error_field")
        if error_field is not None and resolve(str(error_field)) is None:
            problems.append(f"{rwhere}.error_field: no field {shown(error_field)}")
        if not isinstance(rule_spec.get("error_message"), str):
            problems.append(f"{rwhere}.error_message: required (a string)")
        rules.append(
            ValidationRule(
                name=rule_name,
                error_message=str(rule_spec.get("error_message", "")),
                error_field=resolve(str(error_field)) if error_field else None,
                when=predicate,
                active=bool(rule_spec.get("active", True)),
            )
        )

    triggers: list[Trigger] = []
    for trigger_name, trigger_spec in _table(
        spec.get("triggers", {}), f"{where}.triggers", problems
    ).items():
        twhere = f"{where}.triggers.{trigger_name}"
        trigger_spec = _table(trigger_spec, twhere, problems)
        _check_keys(
            trigger_spec, {"events", "timing", "exception", "when", "active"}, twhere, problems
        )
        events = trigger_spec.get("events", ["insert", "update"])
        if not (isinstance(events, list) and set(events) <= {"insert", "update"} and events):
            problems.append(f"{twhere}.events: a non-empty list of 'insert' and 'update'")
            events = ["insert", "update"]
        timing = trigger_spec.get("timing", "before")
        if timing not in {"before", "after"}:
            problems.append(f"{twhere}.timing: 'before' or 'after', got {shown(timing)}")
        triggers.append(
            Trigger(
                name=trigger_name,
                events=frozenset(events),
                timing=str(timing),
                exception=str(
                    trigger_spec.get(
                        "exception",
                        "System.NullPointerException: Attempt to de-reference a null object",
                    )
                ),
                when=_predicate(trigger_spec.get("when"), resolve, f"{twhere}.when", problems),
                active=bool(trigger_spec.get("active", True)),
            )
        )

    return SObjectDef(
        name=obj_name,
        label=label,
        label_plural=str(spec.get("label_plural", label + "s")),
        key_prefix=key_prefix,
        fields=fields,
        validation_rules=tuple(rules),
        triggers=tuple(triggers),
        _by_lower=by_lower,
        _relationships=relationships,
    )


_FIELD_KEYS = {
    "type",
    "label",
    "length",
    "required",
    "unique",
    "external_id",
    "case_sensitive",
    "createable",
    "updateable",
    "reference_to",
    "relationship_name",
    "values",
    "restricted",
    "default",
    "id_lookup",
    "cascade_delete",
}


def _parse_field(name: str, spec: Any, where: str, problems: list[str]) -> FieldDef:
    spec = _table(spec, where, problems)
    _check_keys(spec, _FIELD_KEYS, where, problems)
    ftype = spec.get("type", "string")
    if ftype not in FIELD_TYPES - {"id"}:
        problems.append(f"{where}.type: one of {', '.join(sorted(FIELD_TYPES - {'id'}))}")
        ftype = "string"
    length = spec.get("length")
    if ftype in TEXT_TYPES:
        length = length if length is not None else DEFAULT_LENGTHS.get(ftype, 255)
        if not isinstance(length, int) or length <= 0:
            problems.append(f"{where}.length: a positive integer")
            length = 255
    elif length is not None:
        problems.append(f"{where}.length: only text fields have a length")
        length = None
    reference_to = spec.get("reference_to")
    relationship_name = spec.get("relationship_name")
    targets: tuple[str, ...] = ()
    if isinstance(reference_to, str):
        targets = (reference_to,)
    elif isinstance(reference_to, list) and all(isinstance(t, str) for t in reference_to):
        targets = tuple(reference_to)
    if ftype == "reference":
        if not targets:
            problems.append(
                f"{where}.reference_to: required for a reference field "
                "(an object name, or a list of them for a polymorphic lookup)"
            )
        if relationship_name is None:
            # AccountId → Account, Parent_Account__c → Parent_Account__r, as in Salesforce.
            if name.endswith("__c"):
                relationship_name = name[:-3] + "__r"
            elif name.endswith("Id"):
                relationship_name = name[:-2]
    elif reference_to is not None or relationship_name is not None:
        problems.append(f"{where}: reference_to/relationship_name need type = 'reference'")
    values = spec.get("values", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        problems.append(f"{where}.values: a list of strings")
        values = []
    if spec.get("cascade_delete") and ftype != "reference":
        problems.append(f"{where}.cascade_delete: only reference fields cascade")
    if spec.get("restricted") and ftype not in {"picklist", "multipicklist"}:
        problems.append(f"{where}.restricted: only picklists can be restricted")
    flags = {}
    for flag in (
        "required",
        "unique",
        "external_id",
        "case_sensitive",
        "createable",
        "updateable",
        "restricted",
        "id_lookup",
        "cascade_delete",
    ):
        value = spec.get(flag)
        if value is not None and not isinstance(value, bool):
            problems.append(f"{where}.{flag}: true or false")
        flags[flag] = bool(value) if value is not None else flag in {"createable", "updateable"}
    return FieldDef(
        name=name,
        type=str(ftype),
        label=str(spec.get("label", default_label(name))),
        length=length,
        reference_to=targets if ftype == "reference" else (),
        relationship_name=str(relationship_name) if relationship_name else None,
        values=tuple(values),
        default=spec.get("default"),
        **flags,
    )


def _predicate(spec: Any, resolve: Any, where: str, problems: list[str]) -> Predicate:
    if spec is None:
        problems.append(f"{where}: required (the condition that makes it fire)")
        return lambda record: False
    try:
        predicate, _ = compile_predicate(spec, resolve, where)
    except PredicateError as exc:
        problems.append(str(exc))
        return lambda record: False
    return predicate


def _table(value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    problems.append(f"{where or 'org'}: must be a table")
    return {}


def _check_keys(table: Mapping[str, Any], known: set[str], where: str, problems: list[str]) -> None:
    for key in table:
        if key not in known:
            prefix = f"{where}." if where else ""
            problems.append(f"{prefix}{key}: unknown key (known: {', '.join(sorted(known))})")
