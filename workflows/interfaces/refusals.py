"""Recording who was allowed or refused what: the access audit, and the saga's history.

A refusal (403) is written to the access audit with the caller's authenticated name and role,
what it asked for and its note; when the request names a run (or a dead letter of one), the run's
history gets an `AccessRefused` row too, so that the saga's own record shows the attempt.
"""
from __future__ import annotations

from fastapi import HTTPException, Request

from workflows.core.access import Caller
from workflows.core.errors import SagaError
from workflows.core.state import HistoryEvent
from workflows.operations import credentials as creds
from workflows.runtime.container import get_runtime


def action_of(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "name", None) or request.url.path)[:60]


def target_of(request: Request) -> str | None:
    params = request.path_params
    for key in ("saga_id", "dl_id", "saga_type"):
        if key in params:
            return f"{key.removesuffix('_id')}:{params[key]}"[:200]
    return None


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def allowed(request: Request, caller: Caller, note: str | None) -> None:
    creds.note(get_runtime(), caller.name, caller.role.value, action_of(request), target_of(request), "allowed",
               address=_address(request), remark=note)


def refuse(request: Request, caller: Caller, note: str | None, why: str) -> None:
    """Record the refusal, then raise the 403 that answers it."""
    record(request, caller, note, why)
    raise HTTPException(403, f"refused: {why} ({action_of(request)}); ask an admin for a credential whose role does")


def record(request: Request, caller: Caller, note: str | None, why: str) -> None:
    """Record a refusal: the access audit, and the history of the run the request names."""
    rt = get_runtime()
    action = action_of(request)
    creds.note(rt, caller.name, caller.role.value, action, target_of(request), "refused",
               address=_address(request), remark=note)
    saga_id = request.path_params.get("saga_id") or _dead_letter_saga(request.path_params.get("dl_id"))
    if saga_id and len(saga_id) <= 64 and rt.store.saga_type(saga_id) is not None:
        rt.store.record(saga_id, HistoryEvent("AccessRefused", None, None, {
            "action": action, "who": caller.name, "role": caller.role.value, "refused": why}),
            by=f"api:{caller.name}", now=rt.clock())


def _dead_letter_saga(dl_id: str | None) -> str | None:
    if not dl_id or len(dl_id) > 64:
        return None
    try:
        return get_runtime().store.dead_letter(dl_id).saga_id
    except SagaError:
        return None
