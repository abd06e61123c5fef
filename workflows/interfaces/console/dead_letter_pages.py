"""The console's dead letters: the list with its filters and groups, and one dead letter."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from workflows.core.errors import SagaError
from workflows.interfaces.console import web
from workflows.runtime.container import get_runtime
from workflows.store.base import DeadLetterQuery

router = APIRouter(prefix="/console", include_in_schema=False)
DL_STATUSES = ("OPEN", "REDRIVEN", "DISCARDED", "ALL")
DL_KINDS = ("", "action", "compensation", "event", "message")


def _dl_context(request: Request) -> dict[str, Any]:
    status = web.param(request, "status", DL_STATUSES) or "OPEN"
    saga_type = web.param(request, "type", max_length=100)
    step = web.param(request, "step", max_length=100)
    kind = web.param(request, "kind", DL_KINDS)
    saga_id = web.param(request, "saga", max_length=64)
    n = web.page_number(request)
    q = DeadLetterQuery(status=None if status == "ALL" else status, saga_type=saga_type or None, step=step or None,
                        kind=kind or None, saga_id=saga_id or None, limit=web.PAGE_SIZE, offset=(n - 1) * web.PAGE_SIZE)
    store = get_runtime().store
    page = store.search_dead_letters(q)
    current = {"status": status, "type": saga_type, "step": step, "kind": kind, "saga": saga_id}

    def link(**changes: str) -> str:
        return "/console/dead-letters?" + urlencode({k: v for k, v in {**current, **changes}.items() if v})

    return {"page": page, "filters": current, "statuses": DL_STATUSES, "kinds": DL_KINDS,
            "groups": store.open_dead_letter_groups(), "page_number": n,
            "prev_link": link(page=str(n - 1)) if n > 1 else None,
            "next_link": link(page=str(n + 1)) if q.offset + len(page.items) < page.total else None}


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters_page(request: Request) -> Response:
    guard = web.guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _dl_context(request)
    except web.ConsoleError as e:
        return web.error_page(request, guard, e.status, str(e))
    return web.render(request, guard, "dead_letters.html", **context)


@router.get("/dead-letters/{dl_id}", response_class=HTMLResponse)
def dead_letter_page(dl_id: str, request: Request) -> Response:
    guard = web.guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        dl = get_runtime().store.dead_letter(dl_id)
    except SagaError as e:
        return web.error_page(request, guard, 404, str(e))
    return web.render(request, guard, "dead_letter.html", dl=dl)
