"""Fixtures for the end-to-end export tests: the sandbox org and a user's set-up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_export.sandbox.testing import SandboxHandle, running_sandbox
from tests.export.export_scenario import Scenario


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(seed=7) as handle:
        yield handle


@pytest.fixture
def scenario(tmp_path: Path, sandbox: SandboxHandle, state_url: str) -> Scenario:
    return Scenario(tmp_path, sandbox, state_url)
