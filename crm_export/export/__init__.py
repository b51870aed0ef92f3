"""The export core: batching, outcome classification, pause and skip decisions.

Pure policy behind two ports (``crm_export.ports``): it never sees SQL or HTTP.

- ``plan``: what the core is told about a stream, its policy knobs, a run's result;
- ``sending``: one batch to Salesforce, in pause mode (allOrNone, cut before the culprit) or
  skip mode, with record-level retries;
- ``outcome``: a batch's outcome and the acknowledgement it commits; the flood rule;
- ``fingerprints``: change detection (what Salesforce would store for a record, hashed);
- ``lookback``: the window behind the position that each run re-reads for late commits;
- ``stream_run``: what one run of one stream shares (acknowledging, counters, logs, the
  progress it reports to an observer);
- ``incremental`` (CRMExport) and ``reexport`` (CRMExport_ExportError): the two jobs' loops;
- ``exporter``: the entry points, and the run around them;
- ``bulk``: a large backlog in skip mode through Bulk API 2.0 ingest jobs;
- ``presend``: what describe makes certain before sending (mapping problems, rows the
  org would refuse).
"""

from .exporter import Exporter
from .outcome import BatchOutcome, FloodGuard, Rejected
from .plan import BulkPolicy, ExportPolicy, Lookback, StreamPlan, StreamResult, null_key_name
from .stream_run import ProgressObserver, StreamProgress

__all__ = [
    "BatchOutcome",
    "BulkPolicy",
    "ExportPolicy",
    "Exporter",
    "FloodGuard",
    "Lookback",
    "ProgressObserver",
    "Rejected",
    "StreamPlan",
    "StreamProgress",
    "StreamResult",
    "null_key_name",
]
