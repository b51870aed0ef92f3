"""CRMExport_ExportError: re-export every open ExportErrors row from its current source row."""

from __future__ import annotations

import threading

from crm_export.config import Config
from crm_export.export import StreamResult
from crm_export.watch import Watch
from crm_export.wiring import open_runtime


def run(
    config: Config,
    stop: threading.Event | None = None,
    watch: Watch | None = None,
    *,
    resend_all: bool = False,
) -> list[StreamResult]:
    """``resend_all`` changes nothing here: this job always sends every record it reads."""
    del resend_all
    with open_runtime(config, stop, watch) as runtime:
        return [runtime.exporter.reexport_stream(plan) for plan in runtime.plans]
