"""The HTTP API: start sagas from a web app, read them, act on them. OpenAPI at /docs.

The library serves the generic API through `create_app`; a deployment composes the app it
serves (this repository's is `api.py`: `uvicorn api:app --port 8000`), installing its runtime
first and mounting its own routers, which reuse `Authorized`, `IdempotencyKey`, `Started` and
`status_path`. Importing this module needs no runtime and has no side effects.

Every endpoint but `/healthz` (and the OpenAPI pages) needs `Authorization: Bearer <token>`
when `SAGA_API_TOKEN` or `SAGA_AUTH_CREDENTIALS` is set: a credential's token, whose role decides
what it may do (`Allowed(permission)`; docs: operations/security), or the single token (an admin).
Errors are JSON: `{"error": <kind>, "message": <what to do>}`.
"""
from __future__ import annotations

from collections.abc import Iterable

import workflows.interfaces._api_extra  # noqa: F401  (without the `api` extra: an error that names it)
from fastapi import APIRouter, FastAPI

from workflows.core.access import Caller, Permission
from workflows.interfaces.api.deps import Allowed, Authorized, IdempotencyKey, Note, Operator
from workflows.interfaces.api.endpoints import api, status_path
from workflows.interfaces.api.errors import install_handlers
from workflows.interfaces.api.health import ops
from workflows.interfaces.api.masked import MaskedJSONResponse
from workflows.interfaces.api.models import Started
from workflows.interfaces.console import router as console_router
from workflows.interfaces.metrics import saga_registry
from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.settings import Settings, get_settings

__all__ = ["Allowed", "Authorized", "Caller", "IdempotencyKey", "Note", "Operator", "Permission", "Started",
           "create_app", "status_path"]


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None,
               routers: Iterable[APIRouter] = ()) -> FastAPI:
    """The generic API with `settings` (default: the environment). `runtime` is the one /healthz
    and /metrics check (default: the installed one); the saga operations use the installed
    runtime, looked up per request. `routers` are the deployment's own endpoints, mounted after
    the library's with the same error handling (guard them with `dependencies=[Authorized]`)."""
    settings = settings or get_settings()
    app = FastAPI(title="Saga orchestration API", version="0.1.0", default_response_class=MaskedJSONResponse,
                  description="Start sagas, follow them, and operate them (retry, resume, cancel, dead letters).")
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.metrics = saga_registry(lambda: (runtime or get_runtime()).store,
                                      clock=lambda: (runtime or get_runtime()).clock(),
                                      stuck_after=settings.stuck_after)
    app.include_router(ops)
    app.include_router(api)
    app.include_router(console_router)
    for router in routers:
        app.include_router(router)
    install_handlers(app)
    return app
