"""``config example``: the documented example config, as shipped in the package."""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_OK, Commands


def example_config() -> str:
    """config.example.toml, as shipped in the package (the wheel has no repository beside it)."""
    from importlib import resources

    return (resources.files("crm_export") / "config.example.toml").read_text(encoding="utf-8")


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config())
    return EXIT_OK


def register(commands: Commands) -> None:
    config = commands.add_parser("config", help="print an example config file to start from")
    config_commands = config.add_subparsers(
        dest="config_command", required=True, metavar="CONFIG_COMMAND"
    )
    example = config_commands.add_parser(
        "example",
        help="print the documented example config: crm-export config example > crm-export.toml",
    )
    example.set_defaults(func=cmd_config)
