"""The two scheduled jobs, by id. Each only wires the config to the export core."""

from __future__ import annotations

import threading
from collections.abc import Callable

from crm_export.config import Config
from crm_export.export import StreamResult
from jobs import crm_export, crm_export_export_error

Job = Callable[[Config, threading.Event | None], list[StreamResult]]

JOBS: dict[str, Job] = {
    crm_export.JOB_ID: crm_export.run,
    crm_export_export_error.JOB_ID: crm_export_export_error.run,
}
