"""The console's pages and actions under /console (mounted by `create_app`).

Pages are GETs rendered on the server (Jinja2, autoescaped); the small script in `static/`
refreshes the fragments under `/console/fragments/...` and asks for confirmation. Every action
is a POST carrying the session's CSRF token, a required reason, the operator's name and a ticked
confirmation; it calls the operations layer (`workflows.operations`), which makes the one
version-checked transition. Reads go through the store's read interface only.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import workflows.interfaces._api_extra  # noqa: F401  (without the `api` extra: an error that names it)
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from jinja2 import Environment, FileSystemLoader, select_autoescape

from workflows.core.definition import ForEach, Parallel, definition_of
from workflows.core.errors import SagaError, UnknownSaga
from workflows.core.state import RunStatus
from workflows.core.views import SagaView
from workflows.interfaces.console import auth, chart, timeline
from workflows.operations import actions, dead_letters, signals
from workflows.runtime.container import get_runtime
from workflows.runtime.settings import Settings
from workflows.store.base import DeadLetterQuery, SagaQuery

log = logging.getLogger("workflows.console")

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
AGES: dict[str, tuple[timedelta | None, timedelta | None]] = {
    "15m": (timedelta(minutes=15), None), "1h": (timedelta(hours=1), None), "24h": (timedelta(days=1), None),
    "7d": (timedelta(days=7), None), "older-1h": (None, timedelta(hours=1)),
    "older-24h": (None, timedelta(days=1)),
}
AGE_LABELS = {"": "any age", "15m": "last 15 min", "1h": "last hour", "24h": "last 24 h", "7d": "last 7 days",
              "older-1h": "older than 1 h", "older-24h": "older than 24 h"}
RUN_STATES = [s.value for s in RunStatus]
DL_STATUSES = ("OPEN", "REDRIVEN", "DISCARDED", "ALL")
DL_KINDS = ("", "action", "compensation", "event", "message")
MAX_FIELD = 1000
FAILURES = ("StepAttemptFailed", "StepFailed", "CompensationAttemptFailed", "CompensationFailed")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _ts(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                        autoescape=select_autoescape(enabled_extensions=("html",), default=True))
templates.filters.update(json=_json, ts=_ts, urlquote=lambda v: quote(str(v), safe=""),
                         omit=lambda d, key: {k: v for k, v in d.items() if k != key})

router = APIRouter(prefix="/console", include_in_schema=False)
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}


class ConsoleError(Exception):
    """A request the console refuses, answered as an HTML page naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ plumbing


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _guard(request: Request) -> auth.Session | Response:
    """The request's session, or the answer to give instead (404 when off, the login page)."""
    settings = _settings(request)
    if not auth.enabled(settings):
        raise HTTPException(404, "the console is off: set SAGA_API_TOKEN (or SAGA_CONSOLE_OPEN=true on a laptop)")
    session = auth.current_session(request, settings)
    if session is not None:
        return session
    if not settings.api_token:  # open console (laptop): a session on the first page
        return auth.new_session(request, settings)
    if request.url.path.startswith("/console/fragments/"):
        return Response("log in again", status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?{urlencode({'next': target})}", status_code=303)


def _render(request: Request, session: auth.Session | None, name: str, status: int = 200,
            **context: Any) -> HTMLResponse:
    settings = _settings(request)
    flash = request.cookies.get("saga_console_flash", "")
    body = templates.get_template(name).render(
        csrf=session.csrf if session else "", csrf_field=auth.CSRF_FIELD, flash=flash,
        operator=unquote(request.cookies.get("saga_operator", ""))[:100],
        flower=(settings.flower_url or "").rstrip("/"),
        token_set=bool(settings.api_token), **context)
    response = HTMLResponse(body, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "form-action 'self'")
    if flash:
        response.delete_cookie("saga_console_flash", path="/console")
    if session is not None and request.cookies.get(auth.COOKIE) != session.cookie:
        _set_session(request, response, session)
    return response


def _set_session(request: Request, response: Response, session: auth.Session) -> None:
    response.set_cookie(auth.COOKIE, session.cookie, httponly=True, samesite="strict", path="/console",
                        secure=request.url.scheme == "https")


def _error_page(request: Request, session: auth.Session | None, status: int, message: str) -> HTMLResponse:
    return _render(request, session, "error.html", status=status, message=message)


def _redirect(to: str, message: str, operator: str | None = None) -> RedirectResponse:
    response = RedirectResponse(to, status_code=303)
    response.set_cookie("saga_console_flash", message[:500], httponly=True, samesite="strict", path="/console",
                        max_age=60)
    if operator:
        response.set_cookie("saga_operator", quote(operator), samesite="strict", path="/console",
                            max_age=365 * 86400)
    return response


def _param(request: Request, name: str, allowed: tuple[str, ...] | list[str] | None = None,
           max_length: int = 200) -> str:
    value = request.query_params.get(name, "").strip()
    if len(value) > max_length:
        raise ConsoleError(400, f"the filter {name!r} is longer than {max_length} characters")
    if allowed is not None and value and value not in allowed:
        raise ConsoleError(400, f"the filter {name!r} cannot be {value!r}: choose one of {', '.join(allowed)}")
    return value


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise ConsoleError(400, f"page must be a whole number from 1 to 100000, not {raw[:20]!r}")
    return int(raw)


def _now() -> datetime:
    return get_runtime().clock()


# ------------------------------------------------------------------ login and the static files


@router.get("/static/{name}")
def static_file(name: str, request: Request) -> Response:
    if not auth.enabled(_settings(request)) or name not in STATIC:
        raise HTTPException(404, f"no console file {name!r}")
    return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})



@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    settings = _settings(request)
    if not auth.enabled(settings):
        raise HTTPException(404, "the console is off: set SAGA_API_TOKEN (or SAGA_CONSOLE_OPEN=true on a laptop)")
    if not settings.api_token:
        return RedirectResponse("/console/", status_code=303)
    return _render(request, None, "login.html", next=_safe_next(request.query_params.get("next", "")))


@router.post("/login")
async def login(request: Request) -> Response:
    settings = _settings(request)
    if not auth.enabled(settings):
        raise HTTPException(404, "the console is off")
    form = await request.form()
    token, target = str(form.get("token", "")), _safe_next(str(form.get("next", "")))
    if not auth.token_ok(settings, token):
        return _render(request, None, "login.html", status=401, next=target,
                       message="That is not the API token (SAGA_API_TOKEN) this server was started with.")
    session = auth.new_session(request, settings)
    response = RedirectResponse(target, status_code=303)
    _set_session(request, response, session)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    form = await request.form()
    if not guard.csrf_ok(str(form.get(auth.CSRF_FIELD, ""))):
        return _error_page(request, guard, 403, "refused: the form's CSRF token is missing or wrong")
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/console")
    return response


def _safe_next(target: str) -> str:
    """Only a path of the console (no open redirect to another site)."""
    return target if target.startswith("/console/") and "//" not in target and "\\" not in target else "/console/"


# ------------------------------------------------------------------ sagas


def _saga_query(request: Request) -> tuple[SagaQuery, dict[str, str]]:
    state = _param(request, "state", RUN_STATES)
    saga_type = _param(request, "type", max_length=100)
    age = _param(request, "age", list(AGES))
    stuck = _param(request, "stuck", ("", "1"))
    dlq = _param(request, "dlq", ("", "1"))
    search = _param(request, "q", max_length=200)
    page = _page_number(request)
    now = _now()
    after = before = None
    if age:
        newer, older = AGES[age]
        after = now - newer if newer else None
        before = now - older if older else None
    keys = tuple(k.strip() for k in _settings(request).console_search_keys.split(",") if k.strip())
    q = SagaQuery(state=state or None, saga_type=saga_type or None, created_after=after, created_before=before,
                  stuck_at=now if stuck else None, open_dead_letters=bool(dlq), search=search or None,
                  search_keys=keys, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
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
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _sagas_context(request)
    except ConsoleError as e:
        return _error_page(request, guard, e.status, str(e))
    store = get_runtime().store
    activity = chart.build(store.activity(_now()))
    return _render(request, guard, "sagas.html", chart=activity, types=store.saga_type_names(), **context)


@router.get("/fragments/sagas", response_class=HTMLResponse)
def sagas_fragment(request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _sagas_context(request)
    except ConsoleError as e:
        return HTMLResponse(str(e), status_code=e.status)
    return _render(request, guard, "_sagas_table.html", **context)


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
    now = _now()
    tracebacks: dict[str, str] = {}  # each step's latest failure's traceback (history), else its dead letter's
    for d in view.dead_letters:
        if d.step and d.traceback:
            tracebacks[d.step] = d.traceback
    for e in view.events:
        if e.step and e.type in FAILURES and isinstance(e.detail.get("traceback"), str):
            tracebacks[e.step] = e.detail["traceback"]
    return {"saga": view, "timeline": timeline.build(view, now, _stages(view)), "tracebacks": tracebacks,
            "signals": _signals_of(view),
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


@router.get("/sagas/{saga_id}", response_class=HTMLResponse)
def saga_page(saga_id: str, request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _saga_context(saga_id)
    except SagaError as e:
        return _error_page(request, guard, 404, str(e))
    return _render(request, guard, "saga.html", **context)


@router.get("/fragments/sagas/{saga_id}", response_class=HTMLResponse)
def saga_fragment(saga_id: str, request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _saga_context(saga_id)
    except SagaError as e:
        return HTMLResponse(str(e), status_code=404)
    return _render(request, guard, "_saga_live.html", **context)


# ------------------------------------------------------------------ dead letters


def _dl_context(request: Request) -> dict[str, Any]:
    status = _param(request, "status", DL_STATUSES) or "OPEN"
    saga_type = _param(request, "type", max_length=100)
    step = _param(request, "step", max_length=100)
    kind = _param(request, "kind", DL_KINDS)
    saga_id = _param(request, "saga", max_length=64)
    n = _page_number(request)
    q = DeadLetterQuery(status=None if status == "ALL" else status, saga_type=saga_type or None, step=step or None,
                        kind=kind or None, saga_id=saga_id or None, limit=PAGE_SIZE, offset=(n - 1) * PAGE_SIZE)
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
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        context = _dl_context(request)
    except ConsoleError as e:
        return _error_page(request, guard, e.status, str(e))
    return _render(request, guard, "dead_letters.html", **context)


@router.get("/dead-letters/{dl_id}", response_class=HTMLResponse)
def dead_letter_page(dl_id: str, request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        dl = get_runtime().store.dead_letter(dl_id)
    except SagaError as e:
        return _error_page(request, guard, 404, str(e))
    return _render(request, guard, "dead_letter.html", dl=dl)


# ------------------------------------------------------------------ actions


async def _action_form(request: Request, guard: auth.Session, *, needs_reason: bool = True) -> dict[str, str]:
    """The action's form, checked: CSRF token, confirmation, operator, reason. `ConsoleError` names
    what is missing."""
    try:
        form = await request.form()
    except Exception:  # a body that is no form at all (starlette raises its own parse errors)
        raise ConsoleError(400, "an action is a form POST (application/x-www-form-urlencoded)") from None
    values = {k: str(v).strip() for k, v in form.items() if isinstance(v, str)}
    if not guard.csrf_ok(values.get(auth.CSRF_FIELD, "")):
        raise ConsoleError(403, "refused: the form's CSRF token is missing or wrong (reload the page and try again)")
    if values.get("confirm") != "yes":
        raise ConsoleError(400, "tick the confirmation box: this action changes a saga")
    if not values.get("operator"):
        raise ConsoleError(400, "say who you are (the operator's name is recorded in the saga's history)")
    if needs_reason and not values.get("reason"):
        raise ConsoleError(400, "give a reason (it is recorded in the saga's history)")
    for k, v in values.items():
        if len(v) > MAX_FIELD:
            raise ConsoleError(400, f"the field {k!r} is longer than {MAX_FIELD} characters")
    return values


async def _act(request: Request, back: str, do: Any, verb: str) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        form = await _action_form(request, guard)
        message = await run_in_threadpool(do, form)
    except ConsoleError as e:
        return _error_page(request, guard, e.status, str(e))
    except SagaError as e:  # refused by the operations layer (and recorded in the history)
        return _redirect(back, f"{verb} refused: {e}")
    return _redirect(back, message, form.get("operator"))


@router.post("/sagas/{saga_id}/cancel")
async def cancel(saga_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        v = actions.cancel(saga_id, reason=f["reason"], who=f["operator"])
        return f"cancelled: saga is {v.state}"
    return await _act(request, f"/console/sagas/{quote(saga_id)}", do, "cancel")


@router.post("/sagas/{saga_id}/resume")
async def resume(saga_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        v = actions.resume(saga_id, reason=f["reason"], who=f["operator"])
        return f"resumed: saga is {v.state}"
    return await _act(request, f"/console/sagas/{quote(saga_id)}", do, "resume")


@router.post("/sagas/{saga_id}/retry")
async def retry(saga_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        v = actions.retry_step(saga_id, f.get("step") or None, reason=f["reason"], who=f["operator"])
        return f"step {f.get('step') or '(the one in flight)'} dispatched again: saga is {v.state}"
    return await _act(request, f"/console/sagas/{quote(saga_id)}", do, "retry")


@router.post("/sagas/{saga_id}/signal")
async def send_signal(saga_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        name = f.get("signal", "")
        if not name:
            raise ConsoleError(400, "name the signal to send")
        try:
            payload = json.loads(f.get("payload") or "{}")
        except ValueError as e:
            raise ConsoleError(400, f"the payload is not JSON: {e}") from None
        if isinstance(payload, dict):
            payload.setdefault("reason", f["reason"])  # a rejection's reason, and the operator's in any case
        sent = signals.signal(saga_id, name, payload, who=f["operator"])
        return f"signal {name!r} sent: saga is {sent.state}"
    return await _act(request, f"/console/sagas/{quote(saga_id)}", do, "signal")


@router.post("/dead-letters/redrive-all")
async def redrive_all(request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        if not f.get("saga_type") or not f.get("step"):
            raise ConsoleError(400, "a bulk redrive names a saga type and a step")
        done = dead_letters.redrive_all(f["saga_type"], f["step"], who=f["operator"], reason=f["reason"])
        refused = f"; {len(done.refused)} refused: " + "; ".join(done.refused.values()) if done.refused else ""
        return f"{len(done.redriven)} dead letter(s) of {done.saga_type}/{done.step} redriven{refused}"
    return await _act(request, "/console/dead-letters", do, "bulk redrive")


@router.post("/dead-letters/{dl_id}/redrive")
async def redrive(dl_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        d = dead_letters.redrive(dl_id, who=f["operator"], reason=f["reason"])
        return f"dead letter {d.id} {d.status.lower()}"
    return await _act(request, f"/console/dead-letters/{quote(dl_id)}", do, "redrive")


@router.post("/dead-letters/{dl_id}/discard")
async def discard(dl_id: str, request: Request) -> Response:
    def do(f: dict[str, str]) -> str:
        d = dead_letters.discard(dl_id, who=f["operator"], reason=f["reason"])
        return f"dead letter {d.id} {d.status.lower()}"
    return await _act(request, f"/console/dead-letters/{quote(dl_id)}", do, "discard")
