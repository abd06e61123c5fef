"""The console's runs: the list with its filters and activity chart, and one saga's page
(timeline, steps, tracebacks, the signals it may take)."""
from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from workflows.core.definition import ForEach, Parallel, definition_of
from workflows.core.errors import SagaError, UnknownSaga
from workflows.core.state import RunStatus
from workflows.core.views import SagaView
from workflows.interfaces.console import chart, timeline, web
from workflows.operations.client import what_next
from workflows.runtime.container import get_runtime
from workflows.store.base import SagaQuery

router = APIRouter(prefix="/console", include_in_schema=False)
AGES: dict[str, tuple[timedelta | None, timedelta | None]] = {
    "15m": (timedelta(minutes=15), None), "1h": (timedelta(hours=1), None), "24h": (timedelta(days=1), None),
    "7d": (timedelta(days=7), None), "older-1h": (None, timedelta(hours=1)),
    "older-24h": (None, timedelta(days=1)),
}
AGE_LABELS = {"": "any age", "15m": "last 15 min", "1h": "last hour", "24h": "last 24 h", "7d": "last 7 days",
              "older-1h": "older than 1 h", "older-24h": "older than 24 h"}
RUN_STATES = [s.value for s in RunStatus]
FAILURES = ("StepAttemptFailed", "StepFailed", "CompensationAttemptFailed", "CompensationFailed")


def _saga_query(request: Request) -> tuple[SagaQuery, dict[str, str]]:
    state = web.param(request, "state", RUN_STATES)
    saga_type = web.param(request, "type", max_length=100)
    age = web.param(request, "age", list(AGES))
    stuck = web.param(request, "stuck", ("", "1"))
    dlq = web.param(request, "dlq", ("", "1"))
    search = web.param(request, "q", max_length=200)
    page = web.page_number(request)
    now = web.now()
    after = before = None
    if age:
        newer, older = AGES[age]
        after = now - newer if newer else None
        before = now - older if older else None
    keys = tuple(k.strip() for k in web.settings_of(request).console_search_keys.split(",") if k.strip())
    q = SagaQuery(state=state or None, saga_type=saga_type or None, created_after=after, created_before=before,
                  stuck_at=now if stuck else None, open_dead_letters=bool(dlq), search=search or None,
                  search_keys=keys, limit=web.PAGE_SIZE, offset=(page - 1) * web.PAGE_SIZE)
    filters = {"state": state, "type": saga_type, "age": age, "stuck": stuck, "dlq": dlq, "q": search,
               "page": str(page)}
    return q, filters


def _sagas_context(request: Request) -> dict[str, Any]:
    q, filters = _saga_query(request)
    page = get_runtime().store.search_sagas(q)
    current = {k: v for k, v in filters.items() if v and k != "page"}
    n = int(filters["page"])

    def link(**changes: str) -> str:
        params = {**current, **changes}
        return "/console/?" + urlencode({k: v for k, v in params.items() if v})

    return {"page": page, "filters": filters, "states": RUN_STATES, "ages": AGE_LABELS,
            "query": urlencode(current), "link": link, "page_number": n,
            "prev_link": link(page=str(n - 1)) if n > 1 else None,
            "next_link": link(page=str(n + 1)) if q.offset + len(page.items) < page.total else None,
            "first": q.offset + 1 if page.items else 0, "last": q.offset + len(page.items)}


@router.get("/", response_class=HTMLResponse)
def sagas_page(request: Request) -> Response:
    guard = web.guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _sagas_context(request)
    except web.ConsoleError as e:
        return web.error_page(request, guard, e.status, str(e))
    store = get_runtime().store
    activity = chart.build(store.activity(web.now()))
    return web.render(request, guard, "sagas.html", chart=activity, types=store.saga_type_names(), **context)


@router.get("/fragments/sagas", response_class=HTMLResponse)
def sagas_fragment(request: Request) -> Response:
    guard = web.guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _sagas_context(request)
    except web.ConsoleError as e:
        return HTMLResponse(str(e), status_code=e.status)
    return web.render(request, guard, "_sagas_table.html", **context)


def _stages(view: SagaView) -> dict[str, str]:
    try:
        saga = definition_of(view)  # the run's own version: an older run is drawn with its own groups
    except UnknownSaga:  # not deployed in this API process: drawn without its groups
        return {}
    out: dict[str, str] = {}
    for s in view.steps:
        try:
            node = saga.steps[saga.stage_of(s.name)]
        except (KeyError, SagaError, IndexError):
            continue
        if isinstance(node, Parallel):
            out[s.name] = f"group {node.name}"
        elif isinstance(node, ForEach):
            out[s.name] = f"fan-out {node.step.name}"
    return out


def _saga_context(saga_id: str) -> dict[str, Any]:
    view = get_runtime().store.get(saga_id)
    now = web.now()
    tracebacks: dict[str, str] = {}  # each step's latest failure's traceback (history), else its dead letter's
    for d in view.dead_letters:
        if d.step and d.traceback:
            tracebacks[d.step] = d.traceback
    for e in view.events:
        if e.step and e.type in FAILURES and isinstance(e.detail.get("traceback"), str):
            tracebacks[e.step] = e.detail["traceback"]
    return {"saga": view, "timeline": timeline.build(view, now, _stages(view)), "tracebacks": tracebacks,
            "what_next": what_next(saga_id),
            "signals": _signals_of(view), "signal_fields": _signal_fields(view),
            "steps_in_flight": [s.name for s in view.steps if s.status in ("RUNNING", "COMPENSATING",
                                                                           "COMPENSATION_FAILED")]}


def _signals_of(view: SagaView) -> list[str]:
    """The signals the run's waits listen for (the console offers to send one while it may take it)."""
    if view.state not in (RunStatus.WAITING.value, RunStatus.RUNNING.value, RunStatus.SCHEDULED.value):
        return []
    try:
        saga = definition_of(view)
    except UnknownSaga:
        return []
    names = {s.name for s in view.steps if s.status in ("PENDING", "WAITING")}
    return sorted({w.signal for name in names if (w := saga.wait(name)) is not None})


def _signal_fields(view: SagaView) -> dict[str, str]:
    """Each signal's payload fields, from its wait's model ('approved: boolean (required), ...'): the
    form says what to send. A signal whose wait declares no model takes any JSON object."""
    try:
        saga = definition_of(view)
    except UnknownSaga:
        return {}
    out: dict[str, str] = {}
    for w in saga.plan.waits:
        if w.model is not None:
            schema = w.model.model_json_schema()
            required = set(schema.get("required", ()))
            out[w.signal] = ", ".join(f"{name}: {_type_of(spec)}{' (required)' if name in required else ''}"
                                      for name, spec in schema.get("properties", {}).items())
    return out


def _type_of(spec: dict[str, Any]) -> str:
    if "type" in spec:
        return str(spec["type"])
    return " or ".join(str(x.get("type", "object")) for x in spec.get("anyOf", ())) or "any"


@router.get("/sagas/{saga_id}", response_class=HTMLResponse)
def saga_page(saga_id: str, request: Request) -> Response:
    guard = web.guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _saga_context(saga_id)
    except SagaError as e:
        return web.error_page(request, guard, 404, str(e))
    return web.render(request, guard, "saga.html", **context)


@router.get("/fragments/sagas/{saga_id}", response_class=HTMLResponse)
def saga_fragment(saga_id: str, request: Request) -> Response:
    guard = web.guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _saga_context(saga_id)
    except SagaError as e:
        return HTMLResponse(str(e), status_code=404)
    return web.render(request, guard, "_saga_live.html", **context)
