"""The saga console: server-rendered pages under /console for operators (see README, Console).

`create_app` mounts `router`; it reads through the store's read interface and acts through the
operations layer, like the API. Templates and the vendored script and CSS are in this package.

Pages are GETs rendered on the server (Jinja2, autoescaped); the small script in `static/`
refreshes the fragments under `/console/fragments/...` and asks for confirmation. Every action
is a POST carrying the session's CSRF token, a required reason, the operator's name and a ticked
confirmation; it calls the operations layer (`workflows.operations`), which makes the one
version-checked transition. Reads go through the store's read interface only.
"""
import workflows.interfaces._api_extra  # noqa: F401  (without the `api` extra: an error that names it)
from fastapi import APIRouter

from workflows.interfaces.console import actions, dead_letter_pages, login, notification_pages, saga_pages

router = APIRouter()
for _part in (login.router, saga_pages.router, dead_letter_pages.router, notification_pages.router, actions.router):
    router.include_router(_part)

__all__ = ["router"]
