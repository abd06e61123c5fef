"""The example payment service's own HTTP app: `make payment-service` (port 8001), compose's `payment-service`.

    uvicorn tasks.payment_service:app --port 8001

Its one endpoint is the seed's failure switch, with SAGA_TEST_MODE=true:

    curl -X POST http://localhost:8001/api/test/fail-next-request

arms a failure of the payment service's next charge (no body: one call, permanent, so the order's
saga compensates; the body of tasks/shop_api.py's `FailNextRequest` chooses otherwise). The
switch is a row of `service_faults` in the shop's database, not this process's memory: the
worker running the charge step (tasks/payment.py, `check_fault`) consumes it, whichever process
that is. Without test mode the endpoint answers 404. It takes the API's bearer token when one is
set (SAGA_API_TOKEN or credentials) and answers errors in the API's JSON shape.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import select

import worker  # the same runtime and SAGA_* settings as the workers (the database the faults live in)
from tasks.common import transaction
from tasks.models import Fault
from tasks.shop_api import faults

from workflows.interfaces.api.errors import install_handlers
from workflows.runtime.settings import Settings

PORT = 8001


def create_payment_service(settings: Settings) -> FastAPI:
    """The payment service's app: /healthz, and the failure switch in test mode."""
    app = FastAPI(title="Example payment service", version="0.1.0",
                  description="The example shop's payment service: its test-mode failure switch.")
    app.state.settings = settings
    app.state.runtime = None

    @app.get("/healthz", tags=["ops"])
    def healthz() -> JSONResponse:
        """200 when the service reaches its database (where its failure switch lives), else 503."""
        try:
            with transaction() as s:
                s.execute(select(Fault.service).limit(1))
        except Exception as e:  # noqa: BLE001 - any failure to reach it is the answer
            return JSONResponse({"status": "unavailable", "database": type(e).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "service": "payment", "test_mode": settings.test_mode})

    if settings.test_mode:
        app.include_router(faults)
    install_handlers(app)
    return app


app = create_payment_service(worker.runtime.settings)
