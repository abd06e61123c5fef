"""Every error the API answers, as JSON: `{"error": <kind>, "message": <what to do>}`."""
from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from workflows.core.errors import (DeadLetterNotFound, IdempotencyConflict, InvalidInput, InvalidOperation, SagaError,
                                   SagaNotFound, StepNotFound, UnknownSaga)

log = logging.getLogger("workflows.api")

ERRORS: dict[type[Exception], tuple[int, str]] = {
    SagaNotFound: (404, "saga_not_found"),
    DeadLetterNotFound: (404, "dead_letter_not_found"),
    StepNotFound: (404, "step_not_found"),
    UnknownSaga: (404, "unknown_saga_type"),
    IdempotencyConflict: (409, "idempotency_conflict"),
    InvalidOperation: (409, "invalid_operation"),
    InvalidInput: (422, "invalid_input"),
    SagaError: (422, "invalid_request"),
}


def _error(status_code: int, kind: str, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    return JSONResponse(jsonable_encoder({"error": kind, "message": message, **extra}), status_code=status_code,
                        headers=headers)


def _saga_error(_: Request, exc: Exception) -> JSONResponse:
    code, kind = next(v for t, v in ERRORS.items() if isinstance(exc, t))
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidInput):
        extra["errors"] = exc.errors
    if isinstance(exc, IdempotencyConflict):
        extra["saga_id"] = exc.saga_id
    return _error(code, kind, str(exc), **extra)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return _error(422, "invalid_request", f"invalid request: {summary}", errors=errors)


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = {400: "invalid_body", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))


def _unstorable(_: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold or compare (a NUL character in a text, a number past its
    integers): the request is wrong, not the server."""
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    return _error(422, "invalid_request", f"invalid request: a value the database cannot hold ({reason})")


def _unavailable(what: str) -> Any:
    def handler(_: Request, exc: Exception) -> JSONResponse:
        log.error("%s unavailable: %s", what, exc)
        return _error(503, f"{what}_unavailable", f"the {what} is not answering; retry later (with the same "
                      "Idempotency-Key, a start that was recorded is not repeated)")
    return handler


def install_handlers(app: FastAPI) -> None:
    """Answer every error above, a malformed request and an unreachable server as JSON."""
    for exc_type in ERRORS:
        app.add_exception_handler(exc_type, _saga_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(kombu.exceptions.OperationalError, _unavailable("broker"))
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _unavailable("database"))
    app.add_exception_handler(sqlalchemy.exc.DataError, _unstorable)
