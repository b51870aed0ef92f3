"""The sandbox org: a local HTTPS emulator of the Salesforce APIs crm-export uses.

Unmodified simple-salesforce talks to it over verified TLS. Start one with
``crm-export sandbox serve`` or, in tests, with :func:`crm_export.sandbox.testing.running_sandbox`.
See docs/sandbox.md.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_ORG_PATH = Path(__file__).with_name("default_org.toml")

__all__ = ["DEFAULT_ORG_PATH"]
