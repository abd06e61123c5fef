"""The console's notifications: runs that needed a person, and every delivery attempt of each."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from workflows.interfaces.console import web
from workflows.operations.notifications import STATES, list_notifications

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/notifications", response_class=HTMLResponse)
def notifications_page(request: Request) -> Response:
    guard = web.guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        state = web.param(request, "state", ("", *STATES))
        saga_id = web.param(request, "saga", max_length=64)
    except web.ConsoleError as e:
        return web.error_page(request, guard, e.status, str(e))
    items = list_notifications(saga_id=saga_id or None, state=state or None, limit=web.PAGE_SIZE)
    return web.render(request, guard, "notifications.html", items=items, states=STATES,
                      filters={"state": state, "saga": saga_id})
