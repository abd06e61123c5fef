"""The API's dependencies: settings, runtime, who is calling (and may they), and the headers every caller sends.

`Authorized` authenticates the caller (`Caller`): a credential's bearer token, the single
`SAGA_API_TOKEN`, or a trusted reverse proxy's user header; `Allowed(permission)` refuses with
403 what the caller's role does not grant, and records the refusal with the caller's name (the
access audit, and the saga's history when the request names a run). `X-Operator` is only a note.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from workflows.core.access import Caller, Permission, Role
from workflows.interfaces import refusals
from workflows.operations import credentials as creds
from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime or get_runtime()


bearer = HTTPBearer(auto_error=False,
                    description="A credential's token (`sagas credentials create`), or SAGA_API_TOKEN")

AppSettings = Annotated[Settings, Depends(_settings)]
AppRuntime = Annotated[Runtime, Depends(_runtime)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                              description="Retries of a request with the same key start one saga")]
Note = Annotated[str | None, Header(alias="X-Operator", max_length=100,
                                    description="A free-text note kept in the access audit beside the authenticated "
                                                "name (who acts is the credential's name, never this header)")]
Operator = Note
"""The former name of `Note`: `X-Operator` no longer says who acts."""
ANONYMOUS = Caller("anonymous", Role.ADMIN)
"""The caller of an open API (neither SAGA_API_TOKEN nor SAGA_AUTH_CREDENTIALS: a laptop)."""


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _authenticate(request: Request, settings: Settings, token: str) -> Caller:
    proxies = {a.strip() for a in settings.trusted_proxies.split(",") if a.strip()}
    user = request.headers.get(settings.proxy_user_header, "").strip()
    if user and client_address(request) in proxies:
        caller = creds.proxy_user(settings, user)
        if caller is None:
            raise _unauthorized("the proxy's user has no active credential: sagas credentials create <name> ...")
        return caller
    if token:
        caller = creds.authenticate(settings, token)
        if caller is None:
            raise _unauthorized("unknown, revoked or expired bearer token: send 'Authorization: Bearer <token>' "
                                "with an active credential's token (or SAGA_API_TOKEN)")
        return caller
    if not settings.api_token and not settings.auth_credentials:
        return ANONYMOUS
    raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>' (a credential's token, "
                        "sagas credentials create, or SAGA_API_TOKEN)")


async def require_caller(request: Request, settings: AppSettings, credentials: Credentials) -> Caller:
    """The authenticated caller, kept on `request.state.caller`; 401 otherwise."""
    if not settings.api_token and not settings.auth_credentials:
        caller = ANONYMOUS  # open: no token is looked at, as before credentials existed
    else:
        token = credentials.credentials if credentials is not None else ""
        caller = await run_in_threadpool(_authenticate, request, settings, token)
    request.state.caller = caller
    return caller


Authorized = Depends(require_caller)
AuthCaller = Annotated[Caller, Depends(require_caller)]

AUDITED = (Permission.ACT, Permission.SIGNAL, Permission.SIGNAL_OWN, Permission.MANAGE)
"""Permissions whose allowed use is written to the access audit too (reads and starts are not)."""


def Allowed(*permissions: Permission) -> Any:  # noqa: N802  (a dependency, named like `Depends`)
    """A dependency: the caller, if its role grants one of `permissions`; 403, recorded, otherwise.
    An action (act, signal, manage) that was carried out is written to the access audit afterwards."""

    async def check(request: Request, caller: AuthCaller, note: Note = None) -> AsyncIterator[Caller]:
        granted = [p for p in permissions if caller.may(p)]
        if not granted:
            await run_in_threadpool(refusals.refuse, request, caller, note,
                                    f"the role {caller.role.value!r} may not do this")
        yield caller  # an error of the request (invalid, refused by the operations layer) skips the audit
        if any(p in AUDITED for p in granted) and caller is not ANONYMOUS:
            await run_in_threadpool(refusals.allowed, request, caller, note)

    return Depends(check)


MAX_OFFSET = 1_000_000_000
"""Every number a request carries is bounded: past what the database's integers hold it would be a 5xx."""
