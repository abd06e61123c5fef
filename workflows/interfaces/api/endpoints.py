"""The endpoints under /api: start, read and operate sagas; dead letters."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response

from workflows.core.definition import registry
from workflows.core.outlook import describe
from workflows.core.state import RunStatus
from workflows.core.views import DeadLetterView, SagaView, Signalled
from workflows.interfaces.api.deps import MAX_OFFSET, AppRuntime, Authorized, IdempotencyKey, Operator
from workflows.interfaces.api.models import (NOT_FOUND, REFUSED, ChildSummary, HistoryItem, MoveRequest,
                                             ReasonRequest, RequiredReason, RetryRequest, SagaPage, SagaStatus,
                                             SagaType, SagaVersion, Started, StepSummary, WaitSummary, WhatNext,
                                             answers)
from workflows.operations import actions as operations
from workflows.operations import dead_letters, versions
from workflows.operations.client import get_saga, list_sagas, start_saga, what_next
from workflows.operations.signals import signal as send_signal

# ------------------------------------------------------------------ sagas

api = APIRouter(prefix="/api", dependencies=[Authorized], responses=answers(401, 422, 503))


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
                  for c in v.children],
        what_next=WhatNext.model_validate(describe(nxt)) if (nxt := what_next(saga_id)) is not None else None)


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
