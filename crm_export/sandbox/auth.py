"""Access tokens and the login flows: OAuth 2.0 token endpoint grants and SOAP login."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from crm_export.sandbox.org import ClientApp, OrgModel, User

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# simple-salesforce signs for login/test.salesforce.com; a user may also use the sandbox URL.
JWT_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")


@dataclass
class Token:
    value: str
    username: str
    user_id: str
    client_id: str | None
    issued_at: float
    calls: int = 0


class TokenStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}

    def issue(self, org: OrgModel, user: User, client_id: str | None) -> Token:
        # Shaped like a real session id: the org id, "!", then an opaque secret.
        value = f"{org.org_id[:15]}!{secrets.token_urlsafe(48)}"
        token = Token(value, user.username, user.user_id, client_id, time.monotonic())
        with self._lock:
            self._tokens[value] = token
        return token

    def check(self, value: str, ttl_seconds: float, ttl_calls: int) -> tuple[Token | None, bool]:
        """(token, expired_now): the live token for ``value`` with this call counted."""
        with self._lock:
            token = self._tokens.get(value)
            if token is None:
                return None, False
            expired = (ttl_seconds > 0 and time.monotonic() - token.issued_at >= ttl_seconds) or (
                ttl_calls > 0 and token.calls >= ttl_calls
            )
            if expired:
                del self._tokens[value]
                return None, True
            token.calls += 1
            return token, False

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


@dataclass(frozen=True)
class OAuthError(Exception):
    error: str
    description: str

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _bad_client() -> OAuthError:
    return OAuthError("invalid_client", "invalid client credentials")


def _bad_user() -> OAuthError:
    return OAuthError("invalid_grant", "authentication failure")


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def _client(org: OrgModel, client_id: str | None, secret: str | None) -> ClientApp:
    client = org.clients.get(client_id or "")
    if client is None or secret is None or not hmac.compare_digest(client.client_secret, secret):
        raise _bad_client()
    return client


def authenticate(
    org: OrgModel, form: Mapping[str, str], authorization: str | None, base_url: str
) -> tuple[User, str]:
    """The user and client id a token request authenticates, or raises ``OAuthError``."""
    grant = form.get("grant_type")
    if grant == "client_credentials":
        basic = _basic_credentials(authorization)
        client_id, secret = basic or (form.get("client_id"), form.get("client_secret"))
        client = _client(org, client_id, secret)
        user = org.user(client.run_as) if client.run_as else None
        if user is None:
            raise OAuthError("invalid_grant", "no client credentials user enabled")
        return user, client.client_id
    if grant == "password":
        client = _client(org, form.get("client_id"), form.get("client_secret"))
        user = org.user(form.get("username", ""))
        password = form.get("password", "")
        if user is None or not hmac.compare_digest(user.password, password):
            raise _bad_user()
        return user, client.client_id
    if grant == JWT_GRANT:
        return _jwt_user(org, form.get("assertion", ""), base_url)
    raise OAuthError("unsupported_grant_type", "grant type not supported")


def _jwt_user(org: OrgModel, assertion: str, base_url: str) -> tuple[User, str]:
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise OAuthError("invalid_grant", "invalid assertion") from exc
    client = org.clients.get(str(claims.get("iss", "")))
    if client is None:
        raise OAuthError("invalid_client", "invalid client credentials")
    if client.jwt_key_pem:
        try:
            # simple-salesforce sends exp as a string, which PyJWT's own check rejects.
            jwt.decode(
                assertion,
                _public_key(client.jwt_key_pem),
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_aud": False},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise OAuthError("invalid_grant", "invalid assertion") from exc
    try:
        expires = float(claims["exp"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OAuthError("invalid_grant", "invalid assertion") from exc
    if expires < time.time():
        raise OAuthError("invalid_grant", "expired authorization code")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if not any(a in (*JWT_AUDIENCES, base_url) for a in audiences):
        raise OAuthError("invalid_grant", "audience is invalid")
    user = org.user(str(claims.get("sub", "")))
    if user is None:
        raise _bad_user()
    return user, client.client_id


def _public_key(pem: str) -> RSAPublicKey:
    data = pem.encode("ascii")
    key: Any
    if b"CERTIFICATE" in data:
        key = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = serialization.load_pem_public_key(data)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("the JWT key must be an RSA key")
    return key


def token_response(org: OrgModel, token: Token, base_url: str, secret: str) -> dict[str, str]:
    issued_at = str(int(time.time() * 1000))
    identity = f"{base_url}/id/{org.org_id}/{token.user_id}"
    signature = base64.b64encode(
        hmac.new(secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
    ).decode()
    return {
        "access_token": token.value,
        "instance_url": base_url,
        "id": identity,
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature,
    }


# ---- SOAP login (partner API)

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


class SoapLoginError(Exception):
    pass


def soap_credentials(body: bytes) -> tuple[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise SoapLoginError("the request is not well-formed XML") from exc
    found: dict[str, str] = {}
    for element in root.iter():
        local = element.tag.rpartition("}")[2]
        if local in {"username", "password"} and local not in found:
            found[local] = element.text or ""
    if "username" not in found:
        raise SoapLoginError("no login/username element")
    return found["username"], found.get("password", "")


def soap_user(org: OrgModel, username: str, password: str) -> User | None:
    user = org.user(username)
    if user is None:
        return None
    if not hmac.compare_digest(user.password + user.security_token, password):
        return None
    return user


def soap_login_response(org: OrgModel, token: Token, base_url: str, version: str) -> str:
    # simple-salesforce finds sessionId/serverUrl by exact tag name: they must be unprefixed.
    server_url = f"{base_url}/services/Soap/u/{version}/{org.org_id[:15]}"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns="urn:partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body><loginResponse><result>"
        f"<metadataServerUrl>{escape(base_url)}/services/Soap/m/{version}/{org.org_id[:15]}"
        "</metadataServerUrl>"
        "<passwordExpired>false</passwordExpired><sandbox>true</sandbox>"
        f"<serverUrl>{escape(server_url)}</serverUrl>"
        f"<sessionId>{escape(token.value)}</sessionId>"
        f"<userId>{token.user_id}</userId>"
        f"<userInfo><organizationId>{org.org_id}</organizationId>"
        f"<organizationName>{escape(org.name)}</organizationName>"
        f"<userName>{escape(token.username)}</userName></userInfo>"
        "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
    )


def soap_fault(code: str, message: str) -> str:
    # The failure path reads elements named literally "sf:exceptionCode".
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" '
        'xmlns:sf="urn:fault.partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body><soapenv:Fault>"
        f"<faultcode>sf:{code}</faultcode><faultstring>{code}: {escape(message)}</faultstring>"
        '<detail><sf:LoginFault xsi:type="sf:LoginFault">'
        f"<sf:exceptionCode>{code}</sf:exceptionCode>"
        f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage>"
        "</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
