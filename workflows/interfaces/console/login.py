"""The console's login, logout and its static files (script and CSS)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from starlette.concurrency import run_in_threadpool

from workflows.core.access import Permission
from workflows.interfaces.console import auth, web
from workflows.operations import credentials as creds
from workflows.runtime.container import get_runtime
from workflows.runtime.settings import Settings

router = APIRouter(prefix="/console", include_in_schema=False)
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}


@router.get("/static/{name}")
def static_file(name: str, request: Request) -> Response:
    if not auth.enabled(web.settings_of(request)) or name not in STATIC:
        raise HTTPException(404, f"no console file {name!r}")
    return FileResponse(web.HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})



@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    settings = web.settings_of(request)
    if not auth.enabled(settings):
        raise HTTPException(404, "the console is off: set SAGA_API_TOKEN or SAGA_AUTH_CREDENTIALS (or "
                                 "SAGA_CONSOLE_OPEN=true on a laptop)")
    if auth.is_open(settings):
        return RedirectResponse("/console/", status_code=303)
    return web.render(request, None, "login.html", next=_safe_next(request.query_params.get("next", "")),
                      credentials=settings.auth_credentials)


@router.post("/login")
async def login(request: Request) -> Response:
    """A token (a credential's or the single one), and optionally the credential's name. Failed
    attempts are counted per name and per address; past `SAGA_LOGIN_MAX_FAILURES` within
    `SAGA_LOGIN_LOCKOUT_SECONDS` the console answers 429 to them until the window has passed."""
    settings = web.settings_of(request)
    if not auth.enabled(settings):
        raise HTTPException(404, "the console is off")
    form = await request.form()
    token, target = str(form.get("token", "")), _safe_next(str(form.get("next", "")))
    name = "".join(ch for ch in str(form.get("name", "")) if ch.isprintable()).strip()[:100]
    address = request.client.host if request.client else None
    return await run_in_threadpool(_login, request, settings, name, token, target, address)


def _login(request: Request, settings: Settings, name: str, token: str, target: str,
           address: str | None) -> Response:
    rt = get_runtime()
    context = {"next": target, "credentials": settings.auth_credentials}
    until = creds.locked_until(settings, name, address)
    if until is not None:
        creds.note(rt, name, None, "login", None, "locked", address=address)
        return web.render(request, None, "login.html", status=429, **context,
                          message=f"Too many failed logins for this name or from this address: try again after "
                                  f"{until:%H:%M} UTC.")
    caller = creds.authenticate(settings, token)
    if caller is None or (name and name != caller.name):
        creds.note(rt, name, None, "login", None, "failed", address=address)
        return web.render(request, None, "login.html", status=401, **context,
                          message="That is not the API token (SAGA_API_TOKEN) nor an active credential's token"
                                  + (" for that name." if name else "."))
    if not caller.may(Permission.READ):
        creds.note(rt, caller.name, caller.role.value, "login", None, "refused", address=address)
        return web.render(request, None, "login.html", status=403, **context,
                          message=f"The role {caller.role.value!r} has no console: it is for viewers, operators "
                                  "and admins.")
    if caller.credential_id is not None:
        session = auth.credential_session(creds.open_session(settings, caller), caller)
    else:
        session = auth.new_session(request, settings)
    creds.note(rt, caller.name, caller.role.value, "login", None, "succeeded", address=address)
    response = RedirectResponse(target, status_code=303)
    web.set_session(request, response, session)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    guard = await run_in_threadpool(web.guard, request)
    if isinstance(guard, Response):
        return guard
    form = await request.form()
    if not guard.csrf_ok(str(form.get(auth.CSRF_FIELD, ""))):
        return web.error_page(request, guard, 403, "refused: the form's CSRF token is missing or wrong")
    if guard.server_side:
        await run_in_threadpool(creds.end_session, web.settings_of(request), guard.nonce)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/console")
    return response


def _safe_next(target: str) -> str:
    """Only a path of the console (no open redirect to another site)."""
    return target if target.startswith("/console/") and "//" not in target and "\\" not in target else "/console/"
