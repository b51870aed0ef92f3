"""Logging in: an access token for the configured auth mode, never logging a secret."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt
import requests
import structlog

from crm_export.config import AUTH_NEEDS, SalesforceConfig, Secret
from crm_export.errors import (
    SalesforceConfigurationError,
    ServerError,
)
from crm_export.salesforce.answers import json_body, network_error, retry_after_of

log = structlog.get_logger("crm_export.salesforce")


@dataclass(frozen=True)
class Token:
    access_token: str
    instance_url: str


class Authenticator:
    """Gets an access token for the configured auth mode. Never logs a secret."""

    def __init__(self, cfg: SalesforceConfig, session: requests.Session) -> None:
        self.cfg = cfg
        self.session = session

    def login(self) -> Token:
        cfg = self.cfg
        if cfg.auth == "session":
            assert cfg.session_id is not None and cfg.instance_url is not None
            return Token(cfg.session_id.reveal(), cfg.instance_url)
        form: dict[str, str]
        auth: tuple[str, str] | None = None
        if cfg.auth == "client_credentials":
            assert cfg.client_id is not None and cfg.client_secret is not None
            form = {"grant_type": "client_credentials"}
            auth = (cfg.client_id, cfg.client_secret.reveal())
        elif cfg.auth == "password":
            assert cfg.client_id and cfg.client_secret and cfg.username and cfg.password
            form = {
                "grant_type": "password",
                "client_id": cfg.client_id,
                "client_secret": cfg.client_secret.reveal(),
                "username": cfg.username,
                "password": cfg.password.reveal(),
            }
        else:
            assert cfg.client_id and cfg.username and cfg.private_key
            form = {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": self._assertion(),
            }
        url = cfg.login_url.rstrip("/") + "/services/oauth2/token"
        try:
            response = self.session.post(url, data=form, auth=auth)
        except requests.RequestException as exc:
            raise network_error(exc, cfg.login_url) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise ServerError(
                f"login at {cfg.login_url} answered {response.status_code}",
                retry_after=retry_after_of(response),
            )
        body = json_body(response)
        if response.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            error = body.get("error", response.status_code) if isinstance(body, dict) else "?"
            detail = body.get("error_description", "") if isinstance(body, dict) else ""
            raise SalesforceConfigurationError(
                f"Salesforce login at {cfg.login_url} failed ({cfg.auth}): {error}: {detail}. "
                f"Check {_credential_keys(cfg)}."
            )
        log.info("salesforce_login", login_url=cfg.login_url, instance_url=body["instance_url"])
        return Token(str(body["access_token"]), str(body["instance_url"]))

    def _assertion(self) -> str:
        cfg = self.cfg
        assert cfg.private_key is not None
        claims = {
            "iss": cfg.client_id,
            "sub": cfg.username,
            "aud": jwt_audience(cfg.login_url),
            "exp": int(time.time()) + 180,
        }
        return jwt.encode(claims, cfg.private_key.reveal(), algorithm="RS256")


def _credential_keys(cfg: SalesforceConfig) -> str:
    """The keys this auth mode logs in with (no other), each secret with where it was read."""
    named = []
    for key in AUTH_NEEDS[cfg.auth]:
        value = getattr(cfg, key)
        named.append(
            f"salesforce.{key}" + (f" (from {value.source})" if isinstance(value, Secret) else "")
        )
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]


def jwt_audience(login_url: str) -> str:
    """Salesforce wants login or test.salesforce.com as ``aud``, even behind a My Domain."""
    host = urlsplit(login_url).hostname or ""
    if host == "test.salesforce.com" or host.endswith(".sandbox.my.salesforce.com"):
        return "https://test.salesforce.com"
    if host.endswith("salesforce.com"):
        return "https://login.salesforce.com"
    return login_url.rstrip("/")
