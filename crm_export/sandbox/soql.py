"""A small SOQL subset, enough to read records back.

``SELECT f1, f2 | COUNT() FROM Obj [WHERE cond] [ORDER BY f [ASC|DESC], ...] [LIMIT n]
[OFFSET n]`` where ``cond`` combines ``field op literal``, ``field [NOT] IN (...)`` and
``field LIKE 'pat%'`` with AND, OR, NOT and parentheses. Fields may be one relationship
deep (``Account.Name``). Text comparisons are case-insensitive, as in SOQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crm_export.sandbox.dml import RequestError
from crm_export.sandbox.org import TEXT_TYPES, FieldDef, OrgModel, SObjectDef
from crm_export.sandbox.storage import Record, RecordStore

_TOKEN_RE = re.compile(
    r"""
    \s*(?:
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<number>[+-]?\d+(?:\.\d+)?)
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {
    "select",
    "from",
    "where",
    "and",
    "or",
    "not",
    "in",
    "like",
    "order",
    "by",
    "asc",
    "desc",
    "limit",
    "offset",
    "nulls",
    "first",
    "last",
    "null",
    "true",
    "false",
    "count",
}


def malformed(message: str) -> RequestError:
    return RequestError(400, "MALFORMED_QUERY", message)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str


def _tokenize(soql: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    soql = soql.rstrip()
    while pos < len(soql):
        match = _TOKEN_RE.match(soql, pos)
        if match is None or match.end() == pos:
            raise malformed(f"unexpected token: '{soql[pos : pos + 20].strip()}'")
        kind = match.lastgroup or ""
        text = match.group(kind)
        if kind == "word" and text.lower() in _KEYWORDS:
            kind = "kw"
            text = text.lower()
        tokens.append(_Tok(kind, text))
        pos = match.end()
    return tokens


Condition = Callable[[Record], bool]


@dataclass
class Query:
    sobject: SObjectDef
    fields: list[str]
    count_only: bool
    where: Condition | None
    order_by: list[tuple[str, bool, bool]]
    limit: int | None
    offset: int


class _Parser:
    def __init__(self, org: OrgModel, soql: str) -> None:
        self.org = org
        self.tokens = _tokenize(soql)
        self.pos = 0
        self.sobject: SObjectDef | None = None

    def peek(self, offset: int = 0) -> _Tok | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise malformed("unexpected end of query")
        self.pos += 1
        return tok

    def accept_kw(self, *words: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "kw" and tok.text in words:
            self.pos += 1
            return True
        return False

    def expect_kw(self, word: str) -> None:
        if not self.accept_kw(word):
            tok = self.peek()
            found = tok.text if tok else "end of query"
            raise malformed(f"unexpected token: '{found}', expecting {word.upper()}")

    def expect_punct(self, text: str) -> None:
        tok = self.take()
        if tok.kind != "punct" or tok.text != text:
            raise malformed(f"unexpected token: '{tok.text}', expecting '{text}'")

    def parse(self) -> Query:
        self.expect_kw("select")
        count_only = False
        raw_fields: list[str] = []
        if self.accept_kw("count"):
            self.expect_punct("(")
            self.expect_punct(")")
            count_only = True
        else:
            while True:
                tok = self.take()
                if tok.kind != "word":
                    raise malformed(f"unexpected token: '{tok.text}'")
                raw_fields.append(tok.text)
                nxt = self.peek()
                if nxt is not None and nxt.kind == "punct" and nxt.text == ",":
                    self.pos += 1
                    continue
                break
        self.expect_kw("from")
        obj_tok = self.take()
        if obj_tok.kind != "word":
            raise malformed(f"unexpected token: '{obj_tok.text}'")
        sobject = self.org.sobject(obj_tok.text)
        if sobject is None:
            raise RequestError(
                400,
                "INVALID_TYPE",
                f"sObject type '{obj_tok.text}' is not supported. If you are attempting to use a "
                "custom object, be sure to append the '__c' after the entity name. Please "
                "reference your WSDL or the describe call for the appropriate names.",
            )
        self.sobject = sobject
        fields = [self.field_path(name) for name in raw_fields]
        where = self.condition() if self.accept_kw("where") else None
        order_by: list[tuple[str, bool, bool]] = []
        if self.accept_kw("order"):
            self.expect_kw("by")
            while True:
                tok = self.take()
                if tok.kind != "word":
                    raise malformed(f"unexpected token: '{tok.text}'")
                path = self.field_path(tok.text)
                descending = self.accept_kw("desc")
                if not descending:
                    self.accept_kw("asc")
                nulls_last = descending
                if self.accept_kw("nulls"):
                    nulls_last = self.accept_kw("last")
                    if not nulls_last:
                        self.expect_kw("first")
                order_by.append((path, descending, nulls_last))
                nxt = self.peek()
                if nxt is not None and nxt.kind == "punct" and nxt.text == ",":
                    self.pos += 1
                    continue
                break
        limit = self.integer() if self.accept_kw("limit") else None
        offset = self.integer() if self.accept_kw("offset") else 0
        leftover = self.peek()
        if leftover is not None:
            raise malformed(f"unexpected token: '{leftover.text}'")
        return Query(sobject, fields, count_only, where, order_by, limit, offset)

    def integer(self) -> int:
        tok = self.take()
        if tok.kind != "number" or not tok.text.isdigit():
            raise malformed(f"unexpected token: '{tok.text}', expecting a non-negative integer")
        return int(tok.text)

    def field_path(self, name: str) -> str:
        assert self.sobject is not None
        head, _, rest = name.partition(".")
        if not rest:
            fdef = self.sobject.field(name)
            if fdef is None:
                raise _no_column(name, self.sobject)
            return fdef.name
        ref = self.sobject.relationship(head)
        targets = [self.org.sobject(t) for t in ref.reference_to] if ref else []
        if ref is None or not targets or None in targets or "." in rest:
            raise RequestError(
                400,
                "INVALID_FIELD",
                f"Didn't understand relationship '{head}' in field path. If you are attempting "
                "to use a custom relationship, be sure to append the '__r' after the custom "
                "relationship name. Please reference your WSDL or the describe call for the "
                "appropriate names.",
            )
        assert ref.relationship_name is not None
        if ref.polymorphic:
            # A polymorphic relationship is queried through Salesforce's Name entity.
            name_field = next((f for f in _NAME_FIELDS if f.lower() == rest.lower()), None)
            if name_field is None:
                raise RequestError(
                    400,
                    "INVALID_FIELD",
                    f"No such column '{rest}' on entity 'Name'. If you are attempting to use a "
                    "custom field, be sure to append the '__c' after the custom field name. "
                    "Please reference your WSDL or the describe call for the appropriate names.",
                )
            return f"{ref.relationship_name}.{name_field}"
        target = targets[0]
        assert target is not None
        target_field = target.field(rest)
        if target_field is None:
            raise _no_column(name, self.sobject)
        return f"{ref.relationship_name}.{target_field.name}"

    def condition(self) -> Condition:
        left = self.conjunction()
        while self.accept_kw("or"):
            right = self.conjunction()
            left = _either(left, right)
        return left

    def conjunction(self) -> Condition:
        left = self.factor()
        while self.accept_kw("and"):
            right = self.factor()
            left = _both(left, right)
        return left

    def factor(self) -> Condition:
        if self.accept_kw("not"):
            inner = self.factor()
            return lambda record: not inner(record)
        tok = self.peek()
        if tok is not None and tok.kind == "punct" and tok.text == "(":
            self.pos += 1
            inner = self.condition()
            self.expect_punct(")")
            return inner
        return self.comparison()

    def comparison(self) -> Condition:
        tok = self.take()
        if tok.kind != "word":
            raise malformed(f"unexpected token: '{tok.text}'")
        path = self.field_path(tok.text)
        getter = self.getter(path)
        negate = self.accept_kw("not")
        if self.accept_kw("in"):
            self.expect_punct("(")
            values = [self.literal()]
            while True:
                nxt = self.take()
                if nxt.kind == "punct" and nxt.text == ",":
                    values.append(self.literal())
                    continue
                if nxt.kind == "punct" and nxt.text == ")":
                    break
                raise malformed(f"unexpected token: '{nxt.text}'")
            folded = [_fold(v) for v in values]
            return lambda record: (_fold(getter(record)) in folded) != negate
        if negate:
            raise malformed("unexpected token: 'NOT'")
        if self.accept_kw("like"):
            pattern = self.literal()
            if not isinstance(pattern, str):
                raise malformed("LIKE needs a string literal")
            regex = re.compile(
                "^"
                + "".join(
                    ".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern
                )
                + "$",
                re.IGNORECASE | re.DOTALL,
            )
            return lambda record: (
                isinstance(getter(record), str) and bool(regex.match(getter(record)))
            )
        op_tok = self.take()
        if op_tok.kind != "op":
            raise malformed(f"unexpected token: '{op_tok.text}'")
        value = _fold(self.literal())
        op = "!=" if op_tok.text == "<>" else op_tok.text
        return lambda record: _compare(op, _fold(getter(record)), value)

    def literal(self) -> Any:
        tok = self.take()
        if tok.kind == "string":
            return re.sub(r"\\(.)", r"\1", tok.text[1:-1])
        if tok.kind == "number":
            return float(tok.text) if "." in tok.text else int(tok.text)
        if tok.kind in {"date", "datetime"}:
            return tok.text
        if tok.kind == "kw" and tok.text in {"true", "false", "null"}:
            return {"true": True, "false": False, "null": None}[tok.text]
        raise malformed(f"unexpected token: '{tok.text}', expecting a literal")

    def getter(self, path: str) -> Callable[[Record], Any]:
        return lambda record: record.get(path)


# The fields of Salesforce's Name entity that the sandbox can fill for any parent.
_NAME_FIELDS = ("Id", "Name", "Type")


def _no_column(name: str, sobject: SObjectDef) -> RequestError:
    return RequestError(
        400,
        "INVALID_FIELD",
        f"No such column '{name}' on entity '{sobject.name}'. If you are attempting to use a "
        "custom field, be sure to append the '__c' after the custom field name. Please "
        "reference your WSDL or the describe call for the appropriate names.",
    )


def _either(a: Condition, b: Condition) -> Condition:
    return lambda record: a(record) or b(record)


def _both(a: Condition, b: Condition) -> Condition:
    return lambda record: a(record) and b(record)


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if left is None or right is None:
        return False
    try:
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        return bool(left >= right)
    except TypeError:
        return False


def run_query(org: OrgModel, store: RecordStore, soql: str, version: str) -> dict[str, Any]:
    query = _Parser(org, soql).parse()
    sobject = query.sobject
    with store.lock:
        records = org.system_records(sobject.name) + store.all(sobject.name)
        rows = [_flatten(org, store, sobject, record) for record in records]
    if query.where is not None:
        rows = [row for row in rows if query.where(row)]
    for path, descending, nulls_last in reversed(query.order_by):
        present = [r for r in rows if r.get(path) is not None]
        absent = [r for r in rows if r.get(path) is None]
        present.sort(key=_sort_key(path), reverse=descending)
        rows = present + absent if nulls_last else absent + present
    rows = rows[query.offset :]
    if query.limit is not None:
        rows = rows[: query.limit]
    if query.count_only:
        return {"totalSize": len(rows), "done": True, "records": []}
    records = [_shape(org, sobject, row, query.fields, version) for row in rows]
    return {"totalSize": len(records), "done": True, "records": records}


def _sort_key(path: str) -> Callable[[Record], Any]:
    return lambda record: _fold(record[path])


def _flatten(org: OrgModel, store: RecordStore, sobject: SObjectDef, record: Record) -> Record:
    """The record plus ``Relationship.Field`` keys for each resolvable parent."""
    row = dict(record)
    for fdef in sobject.fields.values():
        if fdef.type != "reference" or not fdef.relationship_name:
            continue
        target, parent = _parent(org, store, fdef.reference_to, record.get(fdef.name))
        relationship = fdef.relationship_name
        row[f"__parent__{relationship}"] = parent
        if parent is None or target is None:
            continue
        row[f"__parent_type__{relationship}"] = target.name
        for key, value in parent.items():
            row[f"{relationship}.{key}"] = value
        if fdef.polymorphic:
            name = parent.get("Name")
            if name is None and "LastName" in parent:
                name = " ".join(p for p in (parent.get("FirstName"), parent["LastName"]) if p)
            row[f"{relationship}.Name"] = name
            row[f"{relationship}.Type"] = target.name
    return row


def _parent(
    org: OrgModel, store: RecordStore, targets: tuple[str, ...], record_id: Any
) -> tuple[SObjectDef | None, Record | None]:
    if not isinstance(record_id, str) or not record_id:
        return None, None
    for name in targets:
        target = org.sobject(name)
        if target is None or not record_id.startswith(target.key_prefix):
            continue
        found = store.get(target.name, record_id) or next(
            (r for r in org.system_records(target.name) if r["Id"] == record_id), None
        )
        if found is not None:
            return target, found
    return None, None


def _attributes(sobject_name: str, record_id: Any, version: str) -> dict[str, Any]:
    return {
        "type": sobject_name,
        "url": f"/services/data/v{version}/sobjects/{sobject_name}/{record_id}",
    }


def _shape(
    org: OrgModel, sobject: SObjectDef, row: Record, fields: list[str], version: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"attributes": _attributes(sobject.name, row.get("Id"), version)}
    for path in fields:
        relationship, dot, name = path.partition(".")
        if not dot:
            out[path] = row.get(path)
            continue
        parent = row.get(f"__parent__{relationship}")
        if parent is None:
            out[relationship] = None
            continue
        target_name = row.get(f"__parent_type__{relationship}", "")
        nested = out.get(relationship)
        if not isinstance(nested, dict):
            ref = sobject.relationship(relationship)
            # Salesforce types a polymorphic parent as its Name entity in query results.
            shown_type = "Name" if ref is not None and ref.polymorphic else target_name
            nested = {"attributes": _attributes(shown_type, parent["Id"], version)}
            out[relationship] = nested
        nested[name] = row.get(path)
    return out


_APEX_TYPES = {
    "id": "Id",
    "reference": "Id",
    "boolean": "Boolean",
    "int": "Integer",
    "double": "Double",
    "currency": "Double",
    "percent": "Double",
    "date": "Date",
    "datetime": "Datetime",
}


def column_metadata(org: OrgModel, soql: str) -> dict[str, Any]:
    """``query?q=...&columns=true``: the columns a query selects, without running it.

    The shape the Salesforce CLI reads (columnName, displayName, aggregate, joinColumns):
    a relationship column holds its parent's fields in ``joinColumns``.
    """
    query = _Parser(org, soql).parse()
    sobject = query.sobject
    columns: list[dict[str, Any]] = []
    joins: dict[str, dict[str, Any]] = {}
    for path in [] if query.count_only else query.fields:
        relationship, dot, name = path.partition(".")
        if not dot:
            columns.append(_column(sobject.fields[path], path, path))
            continue
        ref = sobject.relationship(relationship)
        parent = joins.get(relationship)
        if parent is None:
            parent = {
                **_column(None, relationship, relationship),
                "foreignKeyName": ref.name if ref else None,
            }
            joins[relationship] = parent
            columns.append(parent)
        target = org.sobject(ref.reference_to[0]) if ref and not ref.polymorphic else None
        fdef = target.field(name) if target else None
        parent["joinColumns"].append(_column(fdef, name, path))
    return {
        "columnMetadata": columns,
        "entityName": sobject.name,
        "groupBy": False,
        "idSelected": "Id" in query.fields,
        "keyPrefix": sobject.key_prefix,
    }


def _column(fdef: FieldDef | None, name: str, display: str) -> dict[str, Any]:
    ftype = fdef.type if fdef else None
    return {
        "aggregate": False,
        "apexType": _APEX_TYPES.get(ftype or "", "String") if fdef else None,
        "booleanType": ftype == "boolean",
        "columnName": name,
        "custom": name.endswith("__c") or name.endswith("__r"),
        "displayName": display,
        "foreignKeyName": None,
        "insertable": bool(fdef and fdef.createable),
        "joinColumns": [],
        "numberType": ftype in {"int", "double", "currency", "percent"},
        "textType": ftype in TEXT_TYPES,
        "updatable": bool(fdef and fdef.updateable),
    }
