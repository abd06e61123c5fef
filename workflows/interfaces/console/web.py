"""The console's plumbing: templates, the session guard, rendering with its security headers,
redirects with a flash message, and the checks every query parameter passes."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup

from workflows.core.access import Permission
from workflows.core.sealed import masked
from workflows.interfaces.console import auth
from workflows.runtime.container import get_runtime
from workflows.runtime.settings import Settings

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50


def _json(value: Any) -> str:
    """A value shown on a page: a sealed field by its fixed mask (`core.sealed`)."""
    return json.dumps(masked(value), indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _tojson(value: Any, indent: int | None = None) -> Markup:
    """Jinja's `tojson`, a sealed field by its fixed mask."""
    return htmlsafe_json_dumps(masked(value), indent=indent)


def _ts(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                        autoescape=select_autoescape(enabled_extensions=("html",), default=True))
templates.filters.update(json=_json, tojson=_tojson, ts=_ts, urlquote=lambda v: quote(str(v), safe=""),
                         omit=lambda d, key: {k: v for k, v in d.items() if k != key})


class ConsoleError(Exception):
    """A request the console refuses, answered as an HTML page naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def settings_of(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def guard(request: Request) -> auth.Session | Response:
    """The request's session, or the answer to give instead (404 when off, the login page, 403 for a
    credential whose role may not read, a service's). A credential's session reads the database:
    an `async` page calls it through `starlette.concurrency.run_in_threadpool`."""
    settings = settings_of(request)
    if not auth.enabled(settings):
        raise HTTPException(404, "the console is off: set SAGA_API_TOKEN or SAGA_AUTH_CREDENTIALS (or "
                                 "SAGA_CONSOLE_OPEN=true on a laptop)")
    session = auth.current_session(request, settings)
    if session is not None:
        if not session.caller.may(Permission.READ):
            return error_page(request, session, 403, f"the role {session.caller.role.value!r} has no console: "
                                                     "it is for viewers, operators and admins")
        return session
    if auth.is_open(settings):  # open console (laptop): a session on the first page
        return auth.new_session(request, settings)
    if request.url.path.startswith("/console/fragments/"):
        return Response("log in again", status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?{urlencode({'next': target})}", status_code=303)


def render(request: Request, session: auth.Session | None, name: str, status: int = 200,
            **context: Any) -> HTMLResponse:
    settings = settings_of(request)
    flash = request.cookies.get("saga_console_flash", "")
    body = templates.get_template(name).render(
        csrf=session.csrf if session else "", csrf_field=auth.CSRF_FIELD, flash=flash,
        operator=unquote(request.cookies.get("saga_operator", ""))[:100],
        flower=(settings.flower_url or "").rstrip("/"), caller=session.caller if session else None,
        may_act=bool(session and session.caller.may(Permission.ACT)),
        token_set=not auth.is_open(settings), **context)
    response = HTMLResponse(body, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "form-action 'self'")
    if flash:
        response.delete_cookie("saga_console_flash", path="/console")
    if session is not None and request.cookies.get(auth.COOKIE) != session.cookie:
        set_session(request, response, session)
    return response


def set_session(request: Request, response: Response, session: auth.Session) -> None:
    response.set_cookie(auth.COOKIE, session.cookie, httponly=True, samesite="strict", path="/console",
                        secure=request.url.scheme == "https")


def error_page(request: Request, session: auth.Session | None, status: int, message: str) -> HTMLResponse:
    return render(request, session, "error.html", status=status, message=message)


def redirect(to: str, message: str, operator: str | None = None) -> RedirectResponse:
    response = RedirectResponse(to, status_code=303)
    response.set_cookie("saga_console_flash", message[:500], httponly=True, samesite="strict", path="/console",
                        max_age=60)
    if operator:
        response.set_cookie("saga_operator", quote(operator), samesite="strict", path="/console",
                            max_age=365 * 86400)
    return response


def param(request: Request, name: str, allowed: tuple[str, ...] | list[str] | None = None,
           max_length: int = 200) -> str:
    value = request.query_params.get(name, "").strip()
    if len(value) > max_length:
        raise ConsoleError(400, f"the filter {name!r} is longer than {max_length} characters")
    if allowed is not None and value and value not in allowed:
        raise ConsoleError(400, f"the filter {name!r} cannot be {value!r}: choose one of {', '.join(allowed)}")
    return value


def page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise ConsoleError(400, f"page must be a whole number from 1 to 100000, not {raw[:20]!r}")
    return int(raw)


def now() -> datetime:
    return get_runtime().clock()
