"""The console's sessions, who they authenticate, and the CSRF guard.

A browser cannot send `Authorization: Bearer`, so the login form takes a token once (a
credential's, `sagas credentials create`, or the single `SAGA_API_TOKEN`) and sets an HttpOnly,
`SameSite=Strict` cookie `saga_console`:

- a credential's login: `c.<secret>`, a random session secret whose keyed hash is a row of
  `console_sessions` naming the credential. Each request reads the credential through it, so its
  role applies at once and revoking it (or its expiry) ends the session. Logging out deletes the row.
- the single token: `<nonce>.<mac>`, the mac an HMAC of the nonce keyed by the token: the cookie
  holds no token, proves the token was known, and stops working when the token changes. Its caller
  is the admin `SAGA_API_TOKEN_NAME`.

Every POST carries a CSRF token, an HMAC of the session's nonce (or secret) in a hidden form field,
worthless without the cookie. Without any token and with `SAGA_CONSOLE_OPEN=true` (a laptop) the key
is a random secret of the process and a session (caller `anonymous`) is handed out on the first page.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import workflows.interfaces._api_extra  # noqa: F401  (without the `api` extra: an error that names it)
from fastapi import Request

from workflows.core.access import Caller, Role
from workflows.operations import credentials as creds
from workflows.runtime.settings import Settings

COOKIE = "saga_console"
CSRF_FIELD = "csrf_token"
ANONYMOUS = Caller("anonymous", Role.ADMIN)


@dataclass(frozen=True)
class Session:
    nonce: str
    key: bytes
    caller: Caller
    server_side: bool = False
    """A credential's login (a `console_sessions` row) rather than the single token's signed cookie."""

    @property
    def cookie(self) -> str:
        return f"c.{self.nonce}" if self.server_side else f"{self.nonce}.{_mac(self.key, 'session', self.nonce)}"

    @property
    def csrf(self) -> str:
        return _mac(self.key, "csrf", self.nonce)

    def csrf_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf.encode())


def _mac(key: bytes, purpose: str, nonce: str) -> str:
    return hmac.new(key, f"saga-console:{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()


def enabled(settings: Settings) -> bool:
    """The console is served with a token or credentials, or without when SAGA_CONSOLE_OPEN says so."""
    return bool(settings.api_token) or settings.auth_credentials or settings.console_open


def is_open(settings: Settings) -> bool:
    """No login at all: a laptop (neither a token nor credentials, and SAGA_CONSOLE_OPEN)."""
    return settings.console_open and not settings.api_token and not settings.auth_credentials


def signing_key(request: Request, settings: Settings) -> bytes:
    if settings.api_token:
        return settings.api_token.encode()
    key: bytes | None = getattr(request.app.state, "console_secret", None)
    if key is None:
        key = request.app.state.console_secret = secrets.token_bytes(32)
    return key


def _signed_caller(settings: Settings) -> Caller | None:
    """Who a signed cookie authenticates: the single token's admin, an open laptop's anonymous."""
    if settings.api_token:
        return Caller(settings.api_token_name, Role.ADMIN)
    return ANONYMOUS if is_open(settings) else None


def new_session(request: Request, settings: Settings) -> Session:
    """A signed-cookie session (the single token, or an open laptop)."""
    caller = _signed_caller(settings)
    assert caller is not None, "a signed session needs SAGA_API_TOKEN or an open console"
    return Session(secrets.token_hex(16), signing_key(request, settings), caller)


def credential_session(secret: str, caller: Caller) -> Session:
    return Session(secret, secret.encode(), caller, server_side=True)


def current_session(request: Request, settings: Settings) -> Session | None:
    """The session the request's cookie proves, or None. A credential's session reads the database."""
    raw = request.cookies.get(COOKIE, "")
    if raw.startswith("c."):
        if not settings.auth_credentials:
            return None
        caller = creds.session_caller(settings, raw[2:])
        return credential_session(raw[2:], caller) if caller is not None else None
    nonce, _, mac = raw.partition(".")
    caller = _signed_caller(settings)
    if not nonce or not mac or len(nonce) > 64 or caller is None:
        return None
    session = Session(nonce, signing_key(request, settings), caller)
    return session if hmac.compare_digest(session.cookie.encode(), raw.encode()) else None
