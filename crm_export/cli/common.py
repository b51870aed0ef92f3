"""What every command shares: exit codes, the --config option, loading the config (with
logging set up and its secrets scrubbed), and opening the state database."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from crm_export.config import Config, Secret, load_config
from crm_export.logs import configure_logging

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# What most commands that read the config and the state database exit with.
STATE_CODES: Mapping[int, str] = {
    EXIT_OK: "done",
    EXIT_FAILED: "the state database is unreachable or needs `crm-export db upgrade`",
    EXIT_CONFIG: "the config file or the command line is invalid (the message names the key)",
}


def documented(summary: str, examples: Sequence[str], codes: Mapping[int, str]) -> dict[str, Any]:
    """``add_parser`` keywords: the one-line help, and a --help that ends with examples
    and the exit codes."""
    lines = ["examples:", *(f"  {e}" for e in examples), "", "exit codes:"]
    lines += [f"  {code}  {meaning}" for code, meaning in codes.items()]
    return {
        "help": summary,
        "description": summary[0].upper() + summary[1:] + ".",
        "epilog": "\n".join(lines),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def config_option(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the default is SUPPRESS so that `crm-export --config X job ...` is not
    # overwritten by the subcommand's own default.
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $CRM_EXPORT_CONFIG)",
    )


def secrets_of(config: Config) -> list[str]:
    values = [getattr(config.salesforce, name) for name in type(config.salesforce).model_fields]
    return [v.reveal() for v in values if isinstance(v, Secret)]


def load(args: argparse.Namespace, *, secrets: bool = True) -> Config:
    """The config; ``secrets=False`` for commands that never talk to Salesforce, so that
    they work where the Salesforce secret is not available (see ``load_config``)."""
    config = load_config(args.config, secrets=secrets)
    configure_logging(config.logging.format, config.logging.level, secrets=secrets_of(config))
    return config


def open_store(config: Config) -> Any:
    from crm_export.wiring import open_store

    return open_store(config.database.url)
