"""The endpoints under /api: start, read and operate sagas; dead letters."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BaseModel

from workflows.core.definition import Saga, registry
from workflows.core.outlook import describe
from workflows.core.state import RunStatus
from workflows.core.views import DeadLetterView, SagaView, Signalled
from workflows.core.access import Caller, Permission
from workflows.interfaces import refusals
from workflows.interfaces.api.deps import MAX_OFFSET, Allowed, AppRuntime, Authorized, IdempotencyKey, Note
from workflows.interfaces.api.models import (NOT_FOUND, REFUSED, ChildSummary, HistoryItem, MoveRequest,
                                             ReasonRequest, RequiredReason, RetryRequest, SagaPage, SagaStatus,
                                             SagaType, SagaVersion, SignalSchema, Started, StepSchema, StepSummary,
                                             WaitSummary, WhatNext, answers)
from workflows.operations import actions as operations
from workflows.operations import dead_letters, notifications, versions
from workflows.operations.client import find_saga, get_saga, list_sagas, what_next
from workflows.operations.notifications import NotificationView
from workflows.operations.credentials import owner_of, runs_of, start_owned
from workflows.operations.signals import signal as send_signal

# ------------------------------------------------------------------ sagas

api = APIRouter(prefix="/api", dependencies=[Authorized], responses=answers(401, 403, 422, 503))
Reader = Annotated[Caller, Allowed(Permission.READ, Permission.READ_OWN)]
"""Reads every run (viewer, operator, admin) or its own (service): `_own` checks which."""
Viewer = Annotated[Caller, Allowed(Permission.READ)]
Starter = Annotated[Caller, Allowed(Permission.START)]
Signaller = Annotated[Caller, Allowed(Permission.SIGNAL, Permission.SIGNAL_OWN)]
Actor = Annotated[Caller, Allowed(Permission.ACT)]


def _own(request: Request, caller: Caller, saga_id: str, note: str | None = None) -> None:
    """A caller that may touch only its own runs (a service): 403, recorded, for another's."""
    signalling = request.method == "POST"
    if caller.may(Permission.SIGNAL if signalling else Permission.READ):
        return  # any run: no need to look up whose it is
    owner = owner_of(saga_id) if len(saga_id) <= 64 else None
    if (caller.may_signal(owner) if signalling else caller.may_read(owner)):
        return
    refusals.refuse(request, caller, note, "a service credential reaches only the runs it started")


def status_path(request: Request, saga_id: str) -> str:
    """The path of the saga's status endpoint, for a `Location` header or a `status_url`."""
    return str(request.app.url_path_for("saga_status", saga_id=saga_id))


@api.get("/saga-types", tags=["sagas"])
def saga_types() -> list[SagaType]:  # every caller: a service needs the input schemas
    """The saga types this deployment can start (their newest version's steps), with the JSON schema of their
    input, of each step's input and result, and of each wait's signal payload."""
    return [saga_type_of(registry.newest(n)) for n in registry.names()]  # a type's description: its newest version


@api.get("/saga-types/{saga_type}", tags=["sagas"], responses=NOT_FOUND)
def saga_type(saga_type: Annotated[str, Path(max_length=100)],
              version: Annotated[int | None, Query(ge=1, le=1_000_000,
                                                   description="The saga's version (default: the newest)")] = None,
              ) -> SagaType:
    """One saga type (a version of it): its steps and the JSON schemas a start form and a signal form need."""
    return saga_type_of(registry.get(saga_type, version))


def saga_type_of(s: Saga) -> SagaType:
    return SagaType(name=s.name, version=s.version, versions=registry.versions(s.name), description=s.description,
                    steps=[st.name for st in s.steps], input_schema=schema_of(s.input_model),
                    step_schemas=[StepSchema(name=st.name, input_schema=schema_of(st.input_model),
                                             result_schema=schema_of(st.result_model)) for st in s.plan.task_steps],
                    signal_schemas=[SignalSchema(wait=w.name, signal=w.signal, payload_schema=schema_of(w.model))
                                    for w in s.plan.waits])


def schema_of(model: type[BaseModel] | None) -> dict[str, Any] | None:
    return model.model_json_schema() if model is not None else None


@api.post("/sagas/{saga_type}", status_code=202, tags=["sagas"], responses=REFUSED)
def start(saga_type: str, data: Annotated[dict[str, Any], Body()], request: Request, response: Response,
          caller: Starter, key: IdempotencyKey = None,
          version: Annotated[int | None, Query(ge=1, le=1_000_000,
                                               description="The saga's version (default: the newest)")] = None,
          ) -> Started:
    """Validate the body against the saga's input model, record the run (with the credential that
    started it), publish its start."""
    saga_id = start_owned(caller, saga_type, data, idempotency_key=key, version=version)
    response.headers["Location"] = status_path(request, saga_id)
    return Started(saga_id=saga_id, saga_type=saga_type, status_url=status_path(request, saga_id))


@api.get("/sagas", tags=["sagas"])
def list_runs(request: Request, caller: Reader, state: RunStatus | None = None,
              saga_type: Annotated[str | None, Query(alias="type", max_length=100)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> SagaPage:
    """Runs, newest first, without their history; `next` is the following page (a service
    credential: the runs it started)."""
    if caller.may(Permission.READ):
        items, total = list_sagas(state=state.value if state else None, saga_type=saga_type, limit=limit,
                                  offset=offset)
    else:
        ids, total = runs_of(caller.name, state=state.value if state else None, saga_type=saga_type, limit=limit,
                             offset=offset)
        items = [get_saga(i) for i in ids]
    following = None
    if offset + len(items) < total:
        url = request.url.include_query_params(offset=offset + limit)
        following = f"{url.path}?{url.query}"
    return SagaPage(items=items, total=total, limit=limit, offset=offset, next=following)


ByKey = Annotated[bool, Query(description="The path names an idempotency key (a business id such as an "
                                           "order's), never a run id.")]


@api.get("/sagas/{saga_id}", tags=["sagas"], responses=NOT_FOUND)
def show(saga_id: str, request: Request, caller: Reader, key: ByKey = False) -> SagaView:
    """Everything about a run: state, every step, the full history, its dead letters. `saga_id` is a
    run id, or, when no run has that id, the idempotency key a run was started under."""
    v = find_saga(saga_id, by_key=key)
    _own(request, caller, v.id)
    return v


@api.get("/sagas/{saga_id}/status", name="saga_status", tags=["sagas"], responses=NOT_FOUND)
def status(saga_id: str, request: Request, caller: Reader, key: ByKey = False) -> SagaStatus:
    """The run's state, its steps with attempts and results, and its history in brief. `saga_id` is
    a run id, or, when no run has that id, the idempotency key a run was started under (`?key=true`:
    only a key)."""
    v = find_saga(saga_id, by_key=key)
    _own(request, caller, v.id)
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
        what_next=WhatNext.model_validate(describe(nxt)) if (nxt := what_next(v.id)) is not None else None)


@api.post("/sagas/{saga_id}/signals/{name}", tags=["sagas"], responses=REFUSED)
def signal(saga_id: Annotated[str, Path(max_length=64)], name: Annotated[str, Path(max_length=100)],
           request: Request, caller: Signaller, payload: Annotated[dict[str, Any] | None, Body()] = None,
           key: IdempotencyKey = None, note: Note = None) -> Signalled:
    """Send signal `name` to the run: the wait parked on it takes it (or the next wait, when it
    begins). The same `Idempotency-Key` again changes nothing (`duplicate`); 409 when the run is
    not waiting for it (nothing changed), 422 when the payload fails the wait's model."""
    _own(request, caller, saga_id, note)
    return send_signal(saga_id, name, payload, idempotency_key=key, who=caller.name)


@api.post("/sagas/{saga_id}/retry", tags=["operator"], responses=REFUSED)
def retry(saga_id: str, caller: Actor, body: Annotated[RetryRequest | None, Body()] = None) -> SagaView:
    """Dispatch a step again now: a stuck compensation of a FAILED saga, or an in-flight step."""
    body = body or RetryRequest()
    return operations.retry_step(saga_id, body.step, reason=body.reason, who=caller.name)


@api.post("/sagas/{saga_id}/resume", tags=["operator"], responses=REFUSED)
def resume(saga_id: str, caller: Actor, body: Annotated[ReasonRequest | None, Body()] = None) -> SagaView:
    """Resume the compensation of a FAILED saga once its cause is fixed."""
    return operations.resume(saga_id, reason=(body or ReasonRequest()).reason, who=caller.name)


@api.get("/saga-versions", tags=["sagas"])
def saga_versions(rt: AppRuntime, caller: Viewer) -> list[SagaVersion]:
    """Each saga's versions: fingerprint, runs by state, the live workers holding it."""
    return [SagaVersion(saga_type=v.saga_type, saga_version=v.saga_version, fingerprint=v.fingerprint, runs=v.runs,
                        active=v.active, workers=v.workers, registered_here=v.registered_here)
            for v in versions.version_report(rt)]


@api.post("/sagas/{saga_id}/move", tags=["operator"], responses=REFUSED)
def move(saga_id: str, body: MoveRequest, caller: Actor) -> SagaView:
    """Move a FAILED or stuck run to a newer, compatible version of its saga (409 with the reason if not)."""
    return versions.migrate(saga_id, body.to_version, reason=body.reason, who=caller.name)


@api.post("/sagas/{saga_id}/cancel", tags=["operator"], responses=REFUSED)
def cancel(saga_id: str, body: RequiredReason, caller: Actor) -> SagaView:
    """Force the compensation of a RUNNING or WAITING saga (a SCHEDULED one never starts)."""
    return operations.cancel(saga_id, reason=body.reason, who=caller.name)


# ------------------------------------------------------------------ notifications


@api.get("/notifications", tags=["notifications"])
def list_notifications(caller: Viewer, saga_id: Annotated[str | None, Query(max_length=64)] = None,
                       state: Literal["PENDING", "DELIVERED", "LOGGED"] | None = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[NotificationView]:
    """Runs that needed a person (FAILED, a dead letter, a lost worker, no progress past the bound),
    newest first, each with every delivery attempt."""
    return notifications.list_notifications(saga_id=saga_id, state=state, limit=limit)


# ------------------------------------------------------------------ dead letters


@api.get("/dead-letters", tags=["dead letters"])
def list_dead_letters(caller: Viewer, status: Literal["OPEN", "REDRIVEN", "DISCARDED", "ALL"] = "OPEN",
                      saga_id: Annotated[str | None, Query(max_length=64)] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DeadLetterView]:
    """Dead letters, newest first (OPEN ones wait for an operator)."""
    return dead_letters.list_dead_letters(None if status == "ALL" else status, saga_id=saga_id, limit=limit)


@api.get("/dead-letters/{dl_id}", tags=["dead letters"], responses=NOT_FOUND)
def show_dead_letter(dl_id: str, caller: Viewer) -> DeadLetterView:
    return dead_letters.get_dead_letter(dl_id)


@api.post("/dead-letters/{dl_id}/redrive", tags=["dead letters"], responses=REFUSED)
def redrive(dl_id: str, caller: Actor, body: Annotated[ReasonRequest | None, Body()] = None) -> DeadLetterView:
    """Publish the dead letter's work again, once; a second redrive answers 409."""
    return dead_letters.redrive(dl_id, who=caller.name, reason=(body or ReasonRequest()).reason)


@api.post("/dead-letters/{dl_id}/discard", tags=["dead letters"], responses=REFUSED)
def discard(dl_id: str, body: RequiredReason, caller: Actor) -> DeadLetterView:
    return dead_letters.discard(dl_id, who=caller.name, reason=body.reason)
