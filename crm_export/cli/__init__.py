"""The ``crm-export`` command line: one module per group of commands, each registering its
parsers here.

Exit codes: 0 the command did its work (a run that paused, logged record errors, or was
deferred because the org's API usage reached [salesforce] max_api_usage_percent included:
nothing is wrong, a later run resumes), 1 a run failed or the state database needs
attention, 2 the config or the command line is invalid, or the config does not fit the org
it names (``OrgMismatchError``: a mapped field the object lacks, a login URL that does not
resolve), which names the key to change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crm_export import __version__
from crm_export.errors import ConfigError, CrmExportError, OrgMismatchError
from crm_export.ports import JobId

from . import (
    check_commands,
    config_commands,
    db_commands,
    job_commands,
    record_commands,
    status_commands,
    verify_commands,
)
from .common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, config_option, documented
from .config_commands import example_config

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "build_parser", "example_config", "main"]


def build_parser() -> argparse.ArgumentParser:
    help_text = documented(
        "export SQL records into Salesforce, pausing or skipping on record errors",
        [
            "crm-export demo                                   # try it: SQLite + the sandbox org",
            "crm-export config example > crm-export.toml       # then edit it",
            "crm-export job CRMExport --config crm-export.toml # one run, now",
            "crm-export run --config crm-export.toml           # the daemon, on its schedule",
            "crm-export status                                 # config from $CRM_EXPORT_CONFIG",
            "crm-export errors --stream contacts",
            "crm-export COMMAND --help                         # each command's own examples",
        ],
        {
            EXIT_OK: "the command did its work (a run that paused or logged record errors "
            "included)",
            EXIT_FAILED: "a run failed, another runner is active, or the state database "
            "needs attention",
            EXIT_CONFIG: "the config file or the command line is invalid",
            3: "(run) the daemon lost the runner lock",
            130: "interrupted (Ctrl+C)",
        },
    )
    del help_text["help"]
    parser = argparse.ArgumentParser(prog="crm-export", **help_text)
    parser.add_argument("--version", action="version", version=f"crm-export {__version__}")
    config_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = (job_commands, check_commands, verify_commands, status_commands, record_commands)
    for group in (*groups, db_commands, config_commands):
        group.register(commands)

    from crm_export.sandbox.cli import add_commands as add_sandbox_commands

    add_sandbox_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "resend_all", False) and args.job_id != JobId.EXPORT:
        parser.error(
            f"--resend-all applies to {JobId.EXPORT} only: {args.job_id} always sends every "
            "record it reads"
        )
    try:
        code: int = args.func(args)
        return code
    except (ConfigError, OrgMismatchError) as exc:
        print(f"crm-export: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CrmExportError as exc:
        print(f"crm-export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `crm-export errors --json | head`: the reader left; that is not an error.
        sys.stderr.close()
        return EXIT_OK
