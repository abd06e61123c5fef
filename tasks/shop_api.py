"""The example shop's HTTP endpoints, mounted on the library's API by `api.py`.

`POST /api/orders` starts the example order fulfillment saga (what a shop's checkout would
call); with SAGA_TEST_MODE=true, `POST /api/test/fail-next-request` and `POST /api/test/restock`
arm failures and set stock levels in the example services. They take the library's bearer
token (`Authorized`) and answer errors in its JSON shape (the app's handlers).
"""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, Field

from tasks.common import arm_fault
from tasks.inventory import restock
from tasks.sagas import Order

from workflows.interfaces.api import Allowed, Authorized, Caller, IdempotencyKey, Permission, Started, status_path
from workflows.operations.credentials import start_owned
from workflows.runtime.settings import Settings

# ------------------------------------------------------------------ orders

orders = APIRouter(prefix="/api", dependencies=[Authorized], tags=["sagas"])


class OrderStarted(Started):
    order_id: str


@orders.post("/orders", status_code=202)
def start_order(order: Order, request: Request, response: Response,
                caller: Annotated[Caller, Allowed(Permission.START)], key: IdempotencyKey = None) -> OrderStarted:
    """Start the example order fulfillment saga (what a shop's checkout would call), under the order's
    own id: `GET /api/sagas/<order id>/status` is its status. The same order posted again is the
    same run (its id is the idempotency key unless the request gives one). The run is recorded as the
    caller's (a service credential reads it back)."""
    saga_id = start_owned(caller, "order_fulfillment", order.model_dump(mode="json"), saga_id=order.order_id,
                          idempotency_key=key or order.order_id, version=None)
    response.headers["Location"] = status_path(request, saga_id)
    return OrderStarted(saga_id=saga_id, saga_type="order_fulfillment", order_id=order.order_id,
                        status_url=status_path(request, saga_id))


# ------------------------------------------------------------------ test mode


class FailNextRequest(BaseModel):
    """Arm a failure in an example service. Every field has a default: no body fails the next payment."""

    service: Literal["inventory", "payment", "shipping", "notification"] = "payment"
    times: int = Field(1, ge=1, le=1000, description="How many calls fail")
    permanent: bool = Field(True, description="Permanent: compensated at once; transient: retried")
    operation: Literal["action", "compensation", "any"] = "action"
    message: str = Field("injected by POST /api/test/fail-next-request", max_length=500)


test_mode = APIRouter(prefix="/api/test", dependencies=[Authorized, Allowed(Permission.MANAGE)], tags=["test mode"])


@test_mode.post("/fail-next-request")
def fail_next_request(body: Annotated[FailNextRequest | None, Body()] = None) -> FailNextRequest:
    """Make the next `times` calls of an example service fail (only with SAGA_TEST_MODE=true)."""
    spec = body or FailNextRequest()
    arm_fault(spec.service, spec.times, permanent=spec.permanent, message=spec.message, operation=spec.operation)
    return spec


@test_mode.post("/restock")
def restock_skus(levels: Annotated[dict[Annotated[str, Field(min_length=1, max_length=64)],
                                        Annotated[int, Field(ge=0, le=1_000_000_000)]], Body()]) -> dict[str, int]:
    """Set the available stock of each SKU in the example inventory (only with SAGA_TEST_MODE=true)."""
    restock(levels)
    return levels


# ------------------------------------------------------------------ what api.py mounts


def routers(settings: Settings) -> list[APIRouter]:
    """The shop's routers for `create_app(settings, routers=...)`: the test-mode endpoints only
    with `settings.test_mode` (404 otherwise)."""
    return [orders, test_mode] if settings.test_mode else [orders]
