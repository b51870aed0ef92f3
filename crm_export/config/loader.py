"""Finding and reading the config file: the one way a ``Config`` is made from a file."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from crm_export.config.checks import LoadContext
from crm_export.config.models import Config
from crm_export.config.problems import describe
from crm_export.errors import ConfigError

CONFIG_ENV_VAR: Final = "CRM_EXPORT_CONFIG"


def resolve_config_path(
    arg: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Path:
    """The config file to read: ``arg`` (``--config``), else ``$CRM_EXPORT_CONFIG``.

    The result is absolute but symlinks are kept, so that relative paths in the file resolve
    next to the path the user gave (a Kubernetes ConfigMap mounts the file as a symlink into a
    hidden directory).
    """
    env = os.environ if environ is None else environ
    chosen = os.fspath(arg) if arg is not None else env.get(CONFIG_ENV_VAR, "")
    if not chosen.strip():
        raise ConfigError(
            "(no config file)",
            [
                "no config file given: pass --config PATH "
                f"or set {CONFIG_ENV_VAR}=/path/to/config.toml"
            ],
        )
    return Path(os.path.abspath(os.path.expanduser(chosen)))


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    secrets: bool = True,
) -> Config:
    """Read and validate the config file; raise ``ConfigError`` listing every problem found.

    ``environ`` (default ``os.environ``) is where ``*_env`` secrets and ``CRM_EXPORT_CONFIG``
    are looked up. Loading reads files and never writes anything.

    ``secrets=False`` is for commands that never talk to Salesforce (status, errors, db):
    the secret keys are still checked (a valid variable name, one of ``*_env`` and
    ``*_file``, used by the auth mode), but the variable or file need not exist and is not
    read, so the secret fields are None. An operator without the secret can run them.
    """
    env = os.environ if environ is None else environ
    config_path = resolve_config_path(path, env)
    document = _read_toml(config_path, from_env=path is None)
    context = LoadContext(
        path=config_path, environ=env, secrets=secrets, sandbox=_sandbox_enabled(document)
    )
    try:
        return Config.model_validate(document, context=context)
    except ValidationError as exc:
        problems = describe(exc, document)
    # Raised outside the except block: the ValidationError, which quotes input values
    # (secrets among them), must not ride along as the context of a traceback.
    raise ConfigError(str(config_path), problems)


def _sandbox_enabled(document: Mapping[str, Any]) -> bool:
    # With the sandbox enabled, crm-export points [salesforce] at the sandbox org and brings
    # its own credentials: the keys there are still checked, but not required or read. Only
    # a real `true` counts; anything else is reported by [sandbox] itself.
    sandbox = document.get("sandbox")
    return isinstance(sandbox, dict) and sandbox.get("enabled") is True


def _read_toml(path: Path, *, from_env: bool) -> dict[str, Any]:
    origin = f" (named by {CONFIG_ENV_VAR})" if from_env else ""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problem = (
            f"file not found{origin}; to start one from the documented example, run "
            "`crm-export config example > crm-export.toml`"
        )
    except IsADirectoryError:
        problem = f"is a directory, not a config file{origin}"
    except PermissionError:
        problem = "not readable by this user (permission denied)"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror}"
    else:
        try:
            # utf-8-sig: editors on Windows save a byte-order mark that tomllib rejects.
            return tomllib.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text (byte {exc.start}); TOML files must be UTF-8"
        except tomllib.TOMLDecodeError as exc:
            # tomllib's messages give the position and never quote the file's content.
            problem = f"TOML syntax error: {exc}"
    raise ConfigError(str(path), [problem])
