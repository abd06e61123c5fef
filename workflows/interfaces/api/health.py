"""/healthz and /metrics: is the database and the broker answering, and Prometheus."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from workflows.core.access import Permission
from workflows.interfaces.api.deps import Allowed, AppRuntime
from workflows.interfaces.api.models import answers
from workflows.runtime.container import Runtime

ops = APIRouter(tags=["operations"])


@ops.get("/healthz", responses={503: {"description": "The database or the broker is not answering"}})
def healthz(rt: AppRuntime) -> JSONResponse:
    """The database and the broker answer (no token needed)."""
    checks = {"database": _check(lambda: _ping_database(rt)), "broker": _check(lambda: _ping_broker(rt))}
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)


@ops.get("/metrics", dependencies=[Allowed(Permission.READ)], response_class=Response, responses=answers(401, 403, 503))
def metrics(request: Request) -> Response:
    """Prometheus metrics, computed from the database at scrape time."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


def _check(probe: Any) -> str:
    try:
        probe()
    except Exception as e:  # a health check reports, it does not raise
        return f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return "ok"


def _ping_database(rt: Runtime) -> None:
    rt.store.ping()


def _ping_broker(rt: Runtime) -> None:
    with rt.app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
