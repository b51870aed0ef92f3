"""CRMExport: export every stream's new and changed rows since its position."""

from __future__ import annotations

import threading

from crm_export.config import Config
from crm_export.export import StreamResult
from crm_export.watch import Watch
from crm_export.wiring import open_runtime, warn_about_indexes


def run(
    config: Config,
    stop: threading.Event | None = None,
    watch: Watch | None = None,
    *,
    resend_all: bool = False,
) -> list[StreamResult]:
    """``resend_all`` (``--resend-all``): send every row read, whatever Salesforce holds."""
    with open_runtime(config, stop, watch) as runtime:
        warn_about_indexes(runtime.store, runtime.plans)
        return runtime.run_streams(
            lambda plan: runtime.exporter.export_stream(plan, resend_all=resend_all)
        )
