"""The sandbox org: a local HTTPS emulator of the Salesforce APIs crm-export uses.

Unmodified simple-salesforce talks to it over verified TLS. Start one with
``crm-export sandbox serve`` or, in tests, with :func:`crm_export.sandbox.testing.running_sandbox`.
See docs/sandbox.md.
"""

from __future__ import annotations

import os
from pathlib import Path

# Light on purpose: the main CLI reads these to describe the sandbox commands, and must not
# pay for the server (werkzeug, trustme) unless one is started.
DEFAULT_ORG_PATH = Path(__file__).with_name("default_org.toml")
DEFAULT_PORT = 8443
STATE_FILE_NAME = "sandbox.json"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "crm-export" / "sandbox"


__all__ = ["DEFAULT_ORG_PATH", "DEFAULT_PORT", "STATE_FILE_NAME", "default_state_dir"]
