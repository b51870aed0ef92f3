"""Helpers shared by the sandbox tests (``from tests.sandbox.sandbox_helpers import ...``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from simple_salesforce.exceptions import SalesforceError

if TYPE_CHECKING:
    from simple_salesforce.api import Salesforce as _Salesforce
    from simple_salesforce.api import SFType
    from simple_salesforce.bulk import SFBulkHandler
    from simple_salesforce.bulk2 import SFBulk2Handler

    class Salesforce(_Salesforce):
        """simple-salesforce's ``Salesforce``, for mypy only (at run time the name is the
        library's class itself). ``Salesforce.__getattr__`` is annotated as returning
        ``SFBulkHandler | SFBulk2Handler | SFType`` for every name, which makes ``sf.Contact``
        unusable; what it returns is decided by the name (simple_salesforce/api.py): the two
        bulk handlers for ``bulk`` and ``bulk2``, an ``SFType`` for any other name."""

        bulk: SFBulkHandler
        bulk2: SFBulk2Handler

        def __getattr__(self, name: str) -> SFType: ...

else:
    from simple_salesforce.api import Salesforce

VERSION = "64.0"


def contact(ext_id: str, **fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Contact"}, "External_Id__c": ext_id, **fields}


def upsert_contacts(
    sf: Salesforce, records: list[dict[str, Any]], all_or_none: bool = False
) -> Any:
    return sf.restful(
        "composite/sobjects/Contact/External_Id__c",
        method="PATCH",
        json={"allOrNone": all_or_none, "records": records},
    )


def error_body(error: SalesforceError) -> list[Any]:
    """The JSON body of the answer that raised ``error``: for Salesforce's REST errors, a
    list. simple-salesforce annotates ``SalesforceError.content`` as ``bytes``, but it holds
    the response's parsed JSON, or its text when the body is not JSON
    (``simple_salesforce.util.exception_handler``)."""
    content: object = error.content
    assert isinstance(content, list), content
    return content


def bulk2_job_id(result: Mapping[str, object]) -> str:
    """The job Id in one result of ``sf.bulk2.<sObject>.insert/upsert/...``: simple-salesforce
    annotates those results as ``Dict[str, int]``, but ``job_id`` is the job's Id, a string
    (``simple_salesforce.bulk2.SFBulk2Type._upload_data``)."""
    job_id = result["job_id"]
    assert isinstance(job_id, str), job_id
    return job_id
