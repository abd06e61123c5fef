"""The console's login, logout and its static files (script and CSS)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from workflows.interfaces.console import auth, web

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
        raise HTTPException(404, "the console is off: set SAGA_API_TOKEN (or SAGA_CONSOLE_OPEN=true on a laptop)")
    if not settings.api_token:
        return RedirectResponse("/console/", status_code=303)
    return web.render(request, None, "login.html", next=_safe_next(request.query_params.get("next", "")))


@router.post("/login")
async def login(request: Request) -> Response:
    settings = web.settings_of(request)
    if not auth.enabled(settings):
        raise HTTPException(404, "the console is off")
    form = await request.form()
    token, target = str(form.get("token", "")), _safe_next(str(form.get("next", "")))
    if not auth.token_ok(settings, token):
        return web.render(request, None, "login.html", status=401, next=target,
                       message="That is not the API token (SAGA_API_TOKEN) this server was started with.")
    session = auth.new_session(request, settings)
    response = RedirectResponse(target, status_code=303)
    web.set_session(request, response, session)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    guard = web.guard(request)
    if isinstance(guard, Response):
        return guard
    form = await request.form()
    if not guard.csrf_ok(str(form.get(auth.CSRF_FIELD, ""))):
        return web.error_page(request, guard, 403, "refused: the form's CSRF token is missing or wrong")
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/console")
    return response


def _safe_next(target: str) -> str:
    """Only a path of the console (no open redirect to another site)."""
    return target if target.startswith("/console/") and "//" not in target and "\\" not in target else "/console/"
