"""``config example``: the documented example config, as shipped in the package."""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_OK, Commands, documented

CONFIG_CODES = {EXIT_OK: "printed", 2: "the command line is invalid"}


def example_config() -> str:
    """config.example.toml, as shipped in the package (the wheel has no repository beside it)."""
    from importlib import resources

    return (resources.files("crm_export") / "config.example.toml").read_text(encoding="utf-8")


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config())
    return EXIT_OK


def register(commands: Commands) -> None:
    config = commands.add_parser(
        "config",
        **documented(
            "print an example config file to start from",
            ["crm-export config example > crm-export.toml"],
            CONFIG_CODES,
        ),
    )
    config_commands = config.add_subparsers(
        dest="config_command", required=True, metavar="CONFIG_COMMAND"
    )
    example = config_commands.add_parser(
        "example",
        **documented(
            "print the documented example config",
            ["crm-export config example > crm-export.toml"],
            CONFIG_CODES,
        ),
    )
    example.set_defaults(func=cmd_config)
