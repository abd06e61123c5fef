"""The console's session and CSRF guard.

A browser cannot send `Authorization: Bearer`, so the login form takes the API token once and
sets an HttpOnly cookie `saga_console` = `<nonce>.<mac>`, where the mac is an HMAC of the nonce
keyed by the token: the cookie holds no token, proves the token was known, and stops working when
the token changes. Every POST carries a CSRF token, another HMAC of the same nonce (so it is tied
to this session cookie and worthless without it), in a hidden form field. The cookie is
`SameSite=Strict` as well. Without a token and with `SAGA_CONSOLE_OPEN=true` (a laptop) the key
is a random secret of the process, and a session is handed out on the first page.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import workflows.interfaces._api_extra  # noqa: F401  (without the `api` extra: an error that names it)
from fastapi import Request

from workflows.runtime.settings import Settings

COOKIE = "saga_console"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Session:
    nonce: str
    key: bytes

    @property
    def cookie(self) -> str:
        return f"{self.nonce}.{_mac(self.key, 'session', self.nonce)}"

    @property
    def csrf(self) -> str:
        return _mac(self.key, "csrf", self.nonce)

    def csrf_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf.encode())


def _mac(key: bytes, purpose: str, nonce: str) -> str:
    return hmac.new(key, f"saga-console:{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()


def enabled(settings: Settings) -> bool:
    """The console is served with a token, or without one only when SAGA_CONSOLE_OPEN says so."""
    return bool(settings.api_token) or settings.console_open


def signing_key(request: Request, settings: Settings) -> bytes:
    if settings.api_token:
        return settings.api_token.encode()
    key: bytes | None = getattr(request.app.state, "console_secret", None)
    if key is None:
        key = request.app.state.console_secret = secrets.token_bytes(32)
    return key


def token_ok(settings: Settings, given: str) -> bool:
    expected = settings.api_token or ""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def new_session(request: Request, settings: Settings) -> Session:
    return Session(secrets.token_hex(16), signing_key(request, settings))


def current_session(request: Request, settings: Settings) -> Session | None:
    """The session the request's cookie proves, or None."""
    raw = request.cookies.get(COOKIE, "")
    nonce, _, mac = raw.partition(".")
    if not nonce or not mac or len(nonce) > 64:
        return None
    session = Session(nonce, signing_key(request, settings))
    return session if hmac.compare_digest(session.cookie.encode(), raw.encode()) else None
