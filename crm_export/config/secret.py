"""Secrets: the ``Secret`` value, and reading one from the keys that name it in the file.

A secret ``x`` is never written in the file: ``x_env`` names an environment variable and
``x_file`` a file that holds it. Problems name the variable or the file, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import GetCoreSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from crm_export.config.checks import Problems, problem
from crm_export.config.wording import kind

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Secret:
    """A secret value that never shows itself in repr, str or logs."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source  # e.g. "env SF_CLIENT_SECRET" or "file /run/secrets/sf"

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<from {self.source}>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # Fields hold a Secret already read (see SecretKeys); pydantic only checks the type.
        return core_schema.is_instance_schema(cls)


class EnvOrFile:
    """Marks a secret field: the file names it with ``{field}_env`` or ``{field}_file``."""


@dataclass(frozen=True)
class SecretKeys:
    """One secret's keys as the file wrote them (None: absent)."""

    name: str
    env: object = None
    file: object = None

    @property
    def env_key(self) -> str:
        return f"{self.name}_env"

    @property
    def file_key(self) -> str:
        return f"{self.name}_file"

    def given(self) -> list[str]:
        """The keys written, ``*_env`` first."""
        keys = ((self.env_key, self.env), (self.file_key, self.file))
        return [key for key, value in keys if value is not None]

    def where(self, problems: Problems, base: Path | None) -> str | Path | None:
        """The variable name or the file path; form problems go to ``problems``."""
        if self.env is not None and self.file is not None:
            problems.add(
                problem(
                    "secret_twice",
                    f"set only one of {self.env_key} and {self.file_key}",
                    key=self.env_key,
                )
            )
            return None
        key, value = (
            (self.env_key, self.env) if self.env is not None else (self.file_key, self.file)
        )
        if value is None:
            return None
        if not isinstance(value, str):
            problems.add(
                problem(
                    "secret_key_type", f"must be a string (in quotes), got {kind(value)}", key=key
                )
            )
            return None
        if not value.strip():
            problems.add(problem("blank", "must not be empty", key=key))
            return None
        if key == self.file_key:
            path = Path(value).expanduser()
            return path if base is None else base / path
        if not _ENV_NAME.fullmatch(value):
            # Not quoted back: this is often the secret itself pasted into the wrong key.
            problems.add(
                problem(
                    "secret_env_name",
                    "must be the name of an environment variable (letters, digits and _), "
                    "not the secret itself",
                    key=key,
                )
            )
            return None
        return value

    def read(self, where: str | Path, environ: Mapping[str, str]) -> Secret:
        if isinstance(where, str):
            value = environ.get(where)
            if value is None:
                raise problem(
                    "secret_env_unset", f"environment variable {where} is not set", key=self.env_key
                )
            if not value.strip():
                raise problem(
                    "secret_env_empty", f"environment variable {where} is empty", key=self.env_key
                )
            return Secret(value, f"env {where}")
        return Secret(self._read_file(where), f"file {where}")

    def _read_file(self, path: Path) -> str:
        def fail(message: str) -> PydanticCustomError:
            return problem("secret_file", message, key=self.file_key)

        try:
            # One trailing newline (echo, editors) is never part of a secret.
            value = path.read_bytes().decode("utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise fail(f"file {path} does not exist") from None
        except IsADirectoryError:
            raise fail(f"{path} is a directory, not a file") from None
        except PermissionError:
            raise fail(f"file {path} is not readable by this user (permission denied)") from None
        except OSError as exc:
            raise fail(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise fail(f"file {path} is not UTF-8 text") from None
        if not value.strip():
            raise fail(f"file {path} is empty")
        return value


def usable_private_key(key: Secret | None) -> Secret | None:
    """Check that ``key`` is a usable PEM private key, without ever quoting it."""
    if key is None:
        return None
    where = "private_key_env" if key.source.startswith("env ") else "private_key_file"
    pem = key.reveal()
    if "\\n" in pem and "\n" not in pem:
        # Env files and CI variables cannot hold newlines, so a PEM often arrives with literal
        # \n escapes; PEM text never contains a backslash, so turning them back is safe.
        pem = pem.replace("\\n", "\n")
        key = Secret(pem, key.source)
    # A JWT setup has a certificate (uploaded to the connected app) and its private key (kept
    # here); passing the wrong one is the classic mistake, and it fails only at login.
    if "ENCRYPTED PRIVATE KEY" in pem or "Proc-Type: 4,ENCRYPTED" in pem:
        raise problem(
            "private_key",
            "the private key is encrypted; crm-export needs an unencrypted PEM key",
            key=where,
        )
    if "PRIVATE KEY-----" not in pem:
        found = "a certificate, not" if "BEGIN CERTIFICATE" in pem else "no PEM text for"
        raise problem(
            "private_key",
            f"holds {found} the private key; the JWT flow needs the PEM private key "
            "(-----BEGIN PRIVATE KEY-----) whose certificate is in the connected app",
            key=where,
        )
    return key
