"""The console's actions: each a POST with the session's CSRF token, a confirmation and a reason,
calling the operations layer (one version-checked transition) as the session's caller. The form's
`operator` field is a free-text note kept in the access audit; who acts is the logged-in name. A
role that may not act (a viewer) gets a 403 page, recorded in the audit and the saga's history."""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from workflows.core.access import Permission
from workflows.core.errors import SagaError
from workflows.interfaces import refusals
from workflows.interfaces.console import auth, web
from workflows.operations import actions, dead_letters, signals

router = APIRouter(prefix="/console", include_in_schema=False)
MAX_FIELD = 1000


async def _action_form(request: Request, guard: auth.Session, *, needs_reason: bool = True) -> dict[str, str]:
    """The action's form, checked: CSRF token, confirmation, operator, reason. `web.ConsoleError` names
    what is missing."""
    try:
        form = await request.form()
    except Exception:  # a body that is no form at all (starlette raises its own parse errors)
        raise web.ConsoleError(400, "an action is a form POST (application/x-www-form-urlencoded)") from None
    values = {k: str(v).strip() for k, v in form.items() if isinstance(v, str)}
    if not guard.csrf_ok(values.get(auth.CSRF_FIELD, "")):
        raise web.ConsoleError(403, "refused: the form's CSRF token is missing or wrong (reload the page and try "
                                    "again)")
    if values.get("confirm") != "yes":
        raise web.ConsoleError(400, "tick the confirmation box: this action changes a saga")
    if needs_reason and not values.get("reason"):
        raise web.ConsoleError(400, "give a reason (it is recorded in the saga's history)")
    for k, v in values.items():
        if len(v) > MAX_FIELD:
            raise web.ConsoleError(400, f"the field {k!r} is longer than {MAX_FIELD} characters")
    return values


async def _act(request: Request, back: str, do: Any, verb: str, permission: Permission = Permission.ACT) -> Response:
    guard = await run_in_threadpool(web.guard, request)
    if isinstance(guard, Response):
        return guard
    try:
        form = await _action_form(request, guard)
        caller = guard.caller
        if not caller.may(permission):
            await run_in_threadpool(refusals.record, request, caller, form.get("operator") or None,
                                    f"the role {caller.role.value!r} may not {verb}")
            raise web.ConsoleError(403, f"refused: the role {caller.role.value!r} may not {verb} (recorded with "
                                        f"your name, {caller.name})")
        form["who"] = caller.name
        message = await run_in_threadpool(do, form)
        if caller is not auth.ANONYMOUS:
            await run_in_threadpool(refusals.allowed, request, caller, form.get("operator") or None)
    except web.ConsoleError as e:
        return web.error_page(request, guard, e.status, str(e))
    except SagaError as e:  # refused by the operations layer (and recorded in the history)
        return web.redirect(back, f"{verb} refused: {e}")
    return web.redirect(back, message, form.get("operator"))


@router.post("/sagas/{saga_id}/cancel")
async def cancel(saga_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        v = actions.cancel(saga_id, reason=f["reason"], who=f["who"])
        return f"cancelled: saga is {v.state}"
    return await _act(request, f"/console/sagas/{quote(saga_id)}", do, "cancel")


@router.post("/sagas/{saga_id}/resume")
async def resume(saga_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        v = actions.resume(saga_id, reason=f["reason"], who=f["who"])
        return f"resumed: saga is {v.state}"
    return await _act(request, f"/console/sagas/{quote(saga_id)}", do, "resume")


@router.post("/sagas/{saga_id}/retry")
async def retry(saga_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        v = actions.retry_step(saga_id, f.get("step") or None, reason=f["reason"], who=f["who"])
        return f"step {f.get('step') or '(the one in flight)'} dispatched again: saga is {v.state}"
    return await _act(request, f"/console/sagas/{quote(saga_id)}", do, "retry")


@router.post("/sagas/{saga_id}/signal")
async def send_signal(saga_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        name = f.get("signal", "")
        if not name:
            raise web.ConsoleError(400, "name the signal to send")
        try:
            payload = json.loads(f.get("payload") or "{}")
        except ValueError as e:
            raise web.ConsoleError(400, f"the payload is not JSON: {e}") from None
        if isinstance(payload, dict):
            payload.setdefault("reason", f["reason"])  # a rejection's reason, and the operator's in any case
        sent = signals.signal(saga_id, name, payload, who=f["who"])
        return f"signal {name!r} sent: saga is {sent.state}"
    return await _act(request, f"/console/sagas/{quote(saga_id)}", do, "signal", Permission.SIGNAL)


@router.post("/dead-letters/redrive-all")
async def redrive_all(request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        if not f.get("saga_type") or not f.get("step"):
            raise web.ConsoleError(400, "a bulk redrive names a saga type and a step")
        done = dead_letters.redrive_all(f["saga_type"], f["step"], who=f["who"], reason=f["reason"])
        refused = f"; {len(done.refused)} refused: " + "; ".join(done.refused.values()) if done.refused else ""
        return f"{len(done.redriven)} dead letter(s) of {done.saga_type}/{done.step} redriven{refused}"
    return await _act(request, "/console/dead-letters", do, "bulk redrive")


@router.post("/dead-letters/{dl_id}/redrive")
async def redrive(dl_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        d = dead_letters.redrive(dl_id, who=f["who"], reason=f["reason"])
        return f"dead letter {d.id} {d.status.lower()}"
    return await _act(request, f"/console/dead-letters/{quote(dl_id)}", do, "redrive")


@router.post("/dead-letters/{dl_id}/discard")
async def discard(dl_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        d = dead_letters.discard(dl_id, who=f["who"], reason=f["reason"])
        return f"dead letter {d.id} {d.status.lower()}"
    return await _act(request, f"/console/dead-letters/{quote(dl_id)}", do, "discard")
