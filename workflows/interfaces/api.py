"""The HTTP API: start sagas from a web app, read them, act on them. OpenAPI at /docs.

The library serves the generic API through `create_app`; a deployment composes the app it
serves (this repository's is `api.py`: `uvicorn api:app --port 8000`), installing its runtime
first and mounting its own routers, which reuse `Authorized`, `IdempotencyKey`, `Started` and
`status_path`. Importing this module needs no runtime and has no side effects.

Every endpoint but `/healthz` (and the OpenAPI pages) needs `Authorization: Bearer <token>`
when `SAGA_API_TOKEN` is set. Errors are JSON: `{"error": <kind>, "message": <what to do>}`.
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import kombu.exceptions
import sqlalchemy.exc
import workflows.interfaces._api_extra  # noqa: F401  (without the `api` extra: an error that names it)
from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from workflows.operations import dead_letters
from workflows.operations import actions as operations
from workflows.operations import versions
from workflows.operations.client import get_saga, list_sagas, start_saga
from workflows.operations.signals import signal as send_signal
from workflows.core.definition import registry
from workflows.core.state import RunStatus
from workflows.core.errors import (DeadLetterNotFound, IdempotencyConflict, InvalidInput, InvalidOperation, SagaError,
                     SagaNotFound, StepNotFound, UnknownSaga)
from workflows.interfaces.console import router as console_router
from workflows.interfaces.metrics import saga_registry
from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.settings import Settings, get_settings
from workflows.core.views import DeadLetterView, SagaView, Signalled

__all__ = ["Authorized", "IdempotencyKey", "Operator", "Started", "create_app", "status_path"]

log = logging.getLogger("workflows.api")

# ------------------------------------------------------------------ dependencies


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

# ------------------------------------------------------------------ bodies and answers


class Started(BaseModel):
    saga_id: str
    saga_type: str
    status_url: str = Field(description="GET this path to follow the saga")


class StepSummary(BaseModel):
    name: str
    status: str
    attempts: int
    compensation_attempts: int
    redeliveries: int = Field(0, description="Deliveries of the action's message after its worker was lost")
    compensation_redeliveries: int = Field(0, description="The same for its compensation's message")
    result: dict[str, Any] | None
    error: str | None


class HistoryItem(BaseModel):
    at: str
    type: str
    step: str | None
    attempt: int | None


class WaitSummary(BaseModel):
    step: str
    signal: str
    deadline_at: str | None


class ChildSummary(BaseModel):
    id: str
    saga_type: str
    state: str
    parent_step: str | None


class SagaStatus(BaseModel):
    id: str
    saga_type: str
    saga_version: int = Field(description="The version of the saga's definition the run is driven by")
    state: str
    terminal: bool
    failure_reason: str | None
    updated_at: str
    starts_at: str | None = Field(default=None, description="When a SCHEDULED run starts")
    waiting_for: list[WaitSummary] = Field(default_factory=list, description="The waits parked on a signal")
    steps: list[StepSummary]
    history: list[HistoryItem]
    open_dead_letters: list[str]
    parent_id: str | None = None
    """A child run: the run whose child step started it (and `parent_step`, that step)."""
    parent_step: str | None = None
    children: list[ChildSummary] = []
    """The child runs this run's child steps started."""


class SagaPage(BaseModel):
    items: list[SagaView]
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="The next page, if any")


class SagaType(BaseModel):
    name: str
    version: int = Field(description="The newest version: what a start without ?version= runs")
    versions: list[int] = Field(description="Every version registered here")
    description: str
    steps: list[str]
    input_schema: dict[str, Any] | None


class SagaVersion(BaseModel):
    saga_type: str
    saga_version: int
    fingerprint: str | None
    runs: dict[str, int] = Field(description="Runs on this version, by state")
    active: int = Field(description="Runs on it not terminal: 0 means it can be retired")
    workers: list[str] = Field(description="Live workers holding it")
    registered_here: bool


class MoveRequest(BaseModel):
    to_version: int = Field(ge=1, le=1_000_000, description="The newer version of the run's saga")
    reason: str = Field(min_length=1, max_length=1000)


class RetryRequest(BaseModel):
    step: str | None = Field(default=None,
                             description="The step to dispatch again (default: the stuck or in-flight one)")
    reason: str = ""


class ReasonRequest(BaseModel):
    reason: str = ""


class RequiredReason(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)


class ErrorBody(BaseModel):
    """Every error answer: what kind of error, and what to do about it."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(description="The kind: saga_not_found, invalid_request, invalid_operation, ...")
    message: str = Field(description="What went wrong and what to do")
    errors: list[dict[str, Any]] | None = Field(None, description="invalid_request, invalid_input: each problem")
    saga_id: str | None = Field(None, description="idempotency_conflict: the run the key names")


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of an endpoint, for its OpenAPI spec (schemathesis checks each answer is one)."""
    what = {400: "The body is not JSON", 401: "Missing or wrong bearer token",
            404: "No such saga, saga type, step or dead letter",
            409: "Refused in the current state (recorded in the saga's history), or an idempotency conflict",
            422: "Invalid request: the body, a parameter or a header", 503: "The database or broker is not answering"}
    return {code: {"model": ErrorBody, "description": what[code]} for code in codes}


NOT_FOUND = _answers(404)
REFUSED = _answers(400, 404, 409)


# ------------------------------------------------------------------ sagas

api = APIRouter(prefix="/api", dependencies=[Authorized], responses=_answers(401, 422, 503))


def status_path(request: Request, saga_id: str) -> str:
    """The path of the saga's status endpoint, for a `Location` header or a `status_url`."""
    return str(request.app.url_path_for("saga_status", saga_id=saga_id))


@api.get("/saga-types", tags=["sagas"])
def saga_types() -> list[SagaType]:
    """The saga types this deployment can start (their newest version's steps), with the JSON schema of their input."""
    sagas = [registry.newest(n) for n in registry.names()]  # a type's description: its newest version
    return [SagaType(name=s.name, version=s.version, versions=registry.versions(s.name), description=s.description,
                     steps=[st.name for st in s.steps],
                     input_schema=s.input_model.model_json_schema() if s.input_model else None) for s in sagas]


@api.post("/sagas/{saga_type}", status_code=202, tags=["sagas"], responses=REFUSED)
def start(saga_type: str, data: Annotated[dict[str, Any], Body()], request: Request, response: Response,
          key: IdempotencyKey = None,
          version: Annotated[int | None, Query(ge=1, le=1_000_000,
                                               description="The saga's version (default: the newest)")] = None,
          ) -> Started:
    """Validate the body against the saga's input model, record the run, publish its start."""
    saga_id = start_saga(saga_type, data, idempotency_key=key, version=version)
    response.headers["Location"] = status_path(request, saga_id)
    return Started(saga_id=saga_id, saga_type=saga_type, status_url=status_path(request, saga_id))


@api.get("/sagas", tags=["sagas"])
def list_runs(request: Request, state: RunStatus | None = None,
              saga_type: Annotated[str | None, Query(alias="type", max_length=100)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> SagaPage:
    """Runs, newest first, without their history; `next` is the following page."""
    items, total = list_sagas(state=state.value if state else None, saga_type=saga_type, limit=limit, offset=offset)
    following = None
    if offset + len(items) < total:
        url = request.url.include_query_params(offset=offset + limit)
        following = f"{url.path}?{url.query}"
    return SagaPage(items=items, total=total, limit=limit, offset=offset, next=following)


@api.get("/sagas/{saga_id}", tags=["sagas"], responses=NOT_FOUND)
def show(saga_id: str) -> SagaView:
    """Everything about a run: state, every step, the full history, its dead letters."""
    return get_saga(saga_id)


@api.get("/sagas/{saga_id}/status", name="saga_status", tags=["sagas"], responses=NOT_FOUND)
def status(saga_id: str) -> SagaStatus:
    """The run's state, its steps with attempts and results, and its history in brief."""
    v = get_saga(saga_id)
    return SagaStatus(
        id=v.id, saga_type=v.saga_type, saga_version=v.saga_version, state=v.state, terminal=v.terminal,
        failure_reason=v.failure_reason, updated_at=v.updated_at.isoformat(),
        starts_at=v.deadline_at.isoformat() if v.state == RunStatus.SCHEDULED.value and v.deadline_at else None,
        waiting_for=[WaitSummary(step=s.name, signal=(s.task_id or "").removeprefix("wait:"),
                                 deadline_at=s.deadline_at.isoformat() if s.deadline_at else None)
                     for s in v.steps if s.status == "WAITING"],
        steps=[StepSummary(name=s.name, status=s.status, attempts=s.attempts,
                           compensation_attempts=s.compensation_attempts, redeliveries=s.redeliveries,
                           compensation_redeliveries=s.compensation_redeliveries, result=s.result, error=s.error)
               for s in v.steps],
        history=[HistoryItem(at=e.at.isoformat(), type=e.type, step=e.step, attempt=e.attempt) for e in v.events],
        open_dead_letters=[d.id for d in v.dead_letters if d.status == "OPEN"],
        parent_id=v.parent_id, parent_step=v.parent_step,
        children=[ChildSummary(id=c.id, saga_type=c.saga_type, state=c.state, parent_step=c.parent_step)
                  for c in v.children])


@api.post("/sagas/{saga_id}/signals/{name}", tags=["sagas"], responses=REFUSED)
def signal(saga_id: Annotated[str, Path(max_length=64)], name: Annotated[str, Path(max_length=100)],
           payload: Annotated[dict[str, Any] | None, Body()] = None, key: IdempotencyKey = None,
           who: Operator = "api") -> Signalled:
    """Send signal `name` to the run: the wait parked on it takes it (or the next wait, when it
    begins). The same `Idempotency-Key` again changes nothing (`duplicate`); 409 when the run is
    not waiting for it (nothing changed), 422 when the payload fails the wait's model."""
    return send_signal(saga_id, name, payload, idempotency_key=key, who=who)


@api.post("/sagas/{saga_id}/retry", tags=["operator"], responses=REFUSED)
def retry(saga_id: str, body: Annotated[RetryRequest | None, Body()] = None, who: Operator = "api") -> SagaView:
    """Dispatch a step again now: a stuck compensation of a FAILED saga, or an in-flight step."""
    body = body or RetryRequest()
    return operations.retry_step(saga_id, body.step, reason=body.reason, who=who)


@api.post("/sagas/{saga_id}/resume", tags=["operator"], responses=REFUSED)
def resume(saga_id: str, body: Annotated[ReasonRequest | None, Body()] = None, who: Operator = "api") -> SagaView:
    """Resume the compensation of a FAILED saga once its cause is fixed."""
    return operations.resume(saga_id, reason=(body or ReasonRequest()).reason, who=who)


@api.get("/saga-versions", tags=["sagas"])
def saga_versions(rt: AppRuntime) -> list[SagaVersion]:
    """Each saga's versions: fingerprint, runs by state, the live workers holding it."""
    return [SagaVersion(saga_type=v.saga_type, saga_version=v.saga_version, fingerprint=v.fingerprint, runs=v.runs,
                        active=v.active, workers=v.workers, registered_here=v.registered_here)
            for v in versions.version_report(rt)]


@api.post("/sagas/{saga_id}/move", tags=["operator"], responses=REFUSED)
def move(saga_id: str, body: MoveRequest, who: Operator = "api") -> SagaView:
    """Move a FAILED or stuck run to a newer, compatible version of its saga (409 with the reason if not)."""
    return versions.migrate(saga_id, body.to_version, reason=body.reason, who=who)


@api.post("/sagas/{saga_id}/cancel", tags=["operator"], responses=REFUSED)
def cancel(saga_id: str, body: RequiredReason, who: Operator = "api") -> SagaView:
    """Force the compensation of a RUNNING or WAITING saga (a SCHEDULED one never starts)."""
    return operations.cancel(saga_id, reason=body.reason, who=who)


# ------------------------------------------------------------------ dead letters


@api.get("/dead-letters", tags=["dead letters"])
def list_dead_letters(status: Literal["OPEN", "REDRIVEN", "DISCARDED", "ALL"] = "OPEN",
                      saga_id: Annotated[str | None, Query(max_length=64)] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DeadLetterView]:
    """Dead letters, newest first (OPEN ones wait for an operator)."""
    return dead_letters.list_dead_letters(None if status == "ALL" else status, saga_id=saga_id, limit=limit)


@api.get("/dead-letters/{dl_id}", tags=["dead letters"], responses=NOT_FOUND)
def show_dead_letter(dl_id: str) -> DeadLetterView:
    return dead_letters.get_dead_letter(dl_id)


@api.post("/dead-letters/{dl_id}/redrive", tags=["dead letters"], responses=REFUSED)
def redrive(dl_id: str, body: Annotated[ReasonRequest | None, Body()] = None, who: Operator = "api") -> DeadLetterView:
    """Publish the dead letter's work again, once; a second redrive answers 409."""
    return dead_letters.redrive(dl_id, who=who, reason=(body or ReasonRequest()).reason)


@api.post("/dead-letters/{dl_id}/discard", tags=["dead letters"], responses=REFUSED)
def discard(dl_id: str, body: RequiredReason, who: Operator = "api") -> DeadLetterView:
    return dead_letters.discard(dl_id, who=who, reason=body.reason)


# ------------------------------------------------------------------ health and metrics

ops = APIRouter(tags=["operations"])


@ops.get("/healthz", responses={503: {"description": "The database or the broker is not answering"}})
def healthz(rt: AppRuntime) -> JSONResponse:
    """The database and the broker answer (no token needed)."""
    checks = {"database": _check(lambda: _ping_database(rt)), "broker": _check(lambda: _ping_broker(rt))}
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)


@ops.get("/metrics", dependencies=[Authorized], response_class=Response, responses=_answers(401, 503))
def metrics(request: Request) -> Response:
    """Prometheus metrics, computed from the database at scrape time."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


def _check(probe: Any) -> str:
    try:
        probe()
    except Exception as e:  # a health check reports, it does not raise
        return f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return "ok"


def _ping_database(rt: Runtime) -> None:
    rt.store.ping()


def _ping_broker(rt: Runtime) -> None:
    with rt.app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)


# ------------------------------------------------------------------ errors

ERRORS: dict[type[Exception], tuple[int, str]] = {
    SagaNotFound: (404, "saga_not_found"),
    DeadLetterNotFound: (404, "dead_letter_not_found"),
    StepNotFound: (404, "step_not_found"),
    UnknownSaga: (404, "unknown_saga_type"),
    IdempotencyConflict: (409, "idempotency_conflict"),
    InvalidOperation: (409, "invalid_operation"),
    InvalidInput: (422, "invalid_input"),
    SagaError: (422, "invalid_request"),
}


def _error(status_code: int, kind: str, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    return JSONResponse(jsonable_encoder({"error": kind, "message": message, **extra}), status_code=status_code,
                        headers=headers)


def _saga_error(_: Request, exc: Exception) -> JSONResponse:
    code, kind = next(v for t, v in ERRORS.items() if isinstance(exc, t))
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidInput):
        extra["errors"] = exc.errors
    if isinstance(exc, IdempotencyConflict):
        extra["saga_id"] = exc.saga_id
    return _error(code, kind, str(exc), **extra)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return _error(422, "invalid_request", f"invalid request: {summary}", errors=errors)


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = {400: "invalid_body", 401: "unauthorized", 404: "not_found",
            405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))


def _unstorable(_: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold or compare (a NUL character in a text, a number past its
    integers): the request is wrong, not the server."""
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    return _error(422, "invalid_request", f"invalid request: a value the database cannot hold ({reason})")


def _unavailable(what: str) -> Any:
    def handler(_: Request, exc: Exception) -> JSONResponse:
        log.error("%s unavailable: %s", what, exc)
        return _error(503, f"{what}_unavailable", f"the {what} is not answering; retry later (with the same "
                      "Idempotency-Key, a start that was recorded is not repeated)")
    return handler


# ------------------------------------------------------------------ the app


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None,
               routers: Iterable[APIRouter] = ()) -> FastAPI:
    """The generic API with `settings` (default: the environment). `runtime` is the one /healthz
    and /metrics check (default: the installed one); the saga operations use the installed
    runtime, looked up per request. `routers` are the deployment's own endpoints, mounted after
    the library's with the same error handling (guard them with `dependencies=[Authorized]`)."""
    settings = settings or get_settings()
    app = FastAPI(title="Saga orchestration API", version="0.1.0",
                  description="Start sagas, follow them, and operate them (retry, resume, cancel, dead letters).")
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.metrics = saga_registry(lambda: (runtime or get_runtime()).store,
                                      clock=lambda: (runtime or get_runtime()).clock())
    app.include_router(ops)
    app.include_router(api)
    app.include_router(console_router)
    for router in routers:
        app.include_router(router)
    for exc_type in ERRORS:
        app.add_exception_handler(exc_type, _saga_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(kombu.exceptions.OperationalError, _unavailable("broker"))
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _unavailable("database"))
    app.add_exception_handler(sqlalchemy.exc.DataError, _unstorable)
    return app

