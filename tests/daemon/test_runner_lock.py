"""The SQLite runner lock, in-process: what the daemon's threads rely on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from crm_export.errors import TerminalError
from crm_export.store import FileRunnerLock, runner_lock


def test_the_holder_sees_its_lock_held_from_any_thread(tmp_path: Path) -> None:
    lock = runner_lock(f"sqlite:///{tmp_path / 'state.db'}")
    assert isinstance(lock, FileRunnerLock)
    assert lock.path == tmp_path / "state.runner.lock"
    assert lock.acquire()
    seen: list[bool] = []
    # The daemon's heartbeat asks from its own thread; a thread-local lock would say no.
    checker = threading.Thread(target=lambda: seen.append(lock.alive()))
    checker.start()
    checker.join()
    assert seen == [True]

    other = FileRunnerLock(lock.path)
    assert not other.acquire()
    lock.release()
    assert not lock.alive()
    assert other.acquire()
    other.release()


def test_a_lock_file_that_can_not_be_created_is_a_terminal_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    lock = runner_lock(f"sqlite:///{tmp_path / 'file' / 'state.db'}")
    with pytest.raises(TerminalError, match="cannot create the runner lock file"):
        lock.acquire()
