"""The API's dependencies: settings, runtime, the bearer token, and the headers every caller sends."""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime or get_runtime()


bearer = HTTPBearer(auto_error=False, description="The value of SAGA_API_TOKEN")

AppSettings = Annotated[Settings, Depends(_settings)]
AppRuntime = Annotated[Runtime, Depends(_runtime)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                              description="Retries of a request with the same key start one saga")]
Operator = Annotated[str, Header(alias="X-Operator", min_length=1, max_length=100,
                                 description="Who acts, for the saga's history")]


def require_token(settings: AppSettings, credentials: Credentials) -> None:
    expected = settings.api_token
    if not expected:  # no token configured (an empty SAGA_API_TOKEN counts as none)
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong bearer token: send 'Authorization: Bearer <SAGA_API_TOKEN>'",
                            headers={"WWW-Authenticate": "Bearer"})


Authorized = Depends(require_token)

MAX_OFFSET = 1_000_000_000
"""Every number a request carries is bounded: past what the database's integers hold it would be a 5xx."""
