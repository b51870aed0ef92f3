"""Every command's --help ends with examples and its exit codes (issue 12 §6)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator

from crm_export import daemon
from crm_export.cli import build_parser


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def test_every_command_gives_examples_and_exit_codes() -> None:
    found = dict(commands(build_parser()))
    assert {("job",), ("run",), ("errors",), ("db", "upgrade"), ("sandbox", "records")} <= set(
        found
    )
    for path, parser in found.items():
        text = parser.format_help()
        examples = text.split("examples:\n", 1)[-1].split("\n\nexit codes:\n", 1)
        assert len(examples) == 2, f"{' '.join(path)}: no examples or exit codes"
        assert all(
            line.startswith("  crm-export ") or "crm-export" in line
            for line in examples[0].splitlines()
        ), path
        codes = examples[1].splitlines()
        assert codes and all(re.match(r"  \d+  \S", line) for line in codes), (path, codes)
        assert re.search(r"^  0  ", examples[1], re.MULTILINE), path


def test_the_daemon_s_codes_are_the_ones_its_help_gives() -> None:
    text = dict(commands(build_parser()))[("run",)].format_help()
    text = " ".join(text.split())
    assert f" {daemon.EXIT_STOPPED} stopped on request" in text
    assert f" {daemon.EXIT_START_FAILED} could not start" in text
    assert f" {daemon.EXIT_CONFIG} the config file is invalid at start" in text
    assert f" {daemon.EXIT_LOCK_LOST} lost the runner lock" in text


def test_crm_export_help_as_a_user_runs_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crm_export", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "examples:\n  crm-export demo" in done.stdout
    assert "exit codes:\n  0  the command did its work" in done.stdout
