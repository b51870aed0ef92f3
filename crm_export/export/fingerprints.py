"""Change detection: a compact fingerprint of what Salesforce would store for a record.

The fingerprint covers the payload (as canonical JSON) and where it goes (the sobject and
the external ID field), so a changed value, a field added to or dropped from the mapping, or
a lookup that now points elsewhere all change it. A row whose payload hashes to the
fingerprint Salesforce last accepted is not sent again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from crm_export.mapping import FieldMap

FINGERPRINT_BYTES = 16
# Part of the hash: a change of what is hashed (or how) changes every fingerprint at once,
# so a new scheme resends each record once instead of trusting fingerprints it cannot match.
_SCHEME = b"crm-export/1"


def fingerprint(fmap: FieldMap, payload: Mapping[str, Any]) -> bytes:
    """16 bytes of BLAKE2b over the sobject, the external ID field and the payload."""
    text = json.dumps(
        [fmap.sobject, fmap.external_id_field, payload],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.blake2b(
        text.encode("utf-8"), digest_size=FINGERPRINT_BYTES, person=_SCHEME
    ).digest()
