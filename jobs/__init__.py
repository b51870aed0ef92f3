"""The two scheduled jobs, by id. Each only wires the config to the export core.

Installed as ``crm_export.jobs`` (through a symlink): the wheel has one import name.
"""

from __future__ import annotations

import threading
from typing import Protocol

from crm_export.config import Config
from crm_export.export import StreamResult
from crm_export.ports import JobId
from crm_export.watch import Watch

from . import crm_export, crm_export_export_error


class Job(Protocol):
    def __call__(
        self,
        config: Config,
        stop: threading.Event | None = None,
        watch: Watch | None = None,
        *,
        resend_all: bool = False,
    ) -> list[StreamResult]: ...


JOBS: dict[JobId, Job] = {
    JobId.EXPORT: crm_export.run,
    JobId.REEXPORT: crm_export_export_error.run,
}
