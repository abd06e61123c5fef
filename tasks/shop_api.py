"""The example shop's HTTP endpoints, mounted on the library's API by `api.py`.

`POST /api/orders` starts the example order fulfillment saga (what a shop's checkout would
call; the body it accepts and its defaults: tasks/checkout.py); with SAGA_TEST_MODE=true,
`POST /api/test/fail-next-request` and `POST /api/test/restock` arm failures and set stock levels
in the example services. The failure endpoint is also the payment service's own, on its own port
(tasks/payment_service.py, `make payment-service`, port 8001). They take the library's bearer
token (`Authorized`) and answer errors in its JSON shape (the app's handlers).
"""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, Field

from tasks.checkout import OrderBody, next_order_id
from tasks.common import arm_fault
from tasks.inventory import restock

from workflows import IdempotencyConflict, get_runtime, get_saga
from workflows.core.errors import SagaIdTaken
from workflows.interfaces.api import Allowed, Authorized, Caller, IdempotencyKey, Permission, Started, status_path
from workflows.operations.credentials import start_owned
from workflows.runtime.settings import Settings

# ------------------------------------------------------------------ orders

orders = APIRouter(prefix="/api", dependencies=[Authorized], tags=["sagas"])


class OrderStarted(Started):
    order_id: str


NUMBERING_TRIES = 20
"""How many shop numbers an order posted without an id tries before giving up (a number is skipped
when a caller already used it as an explicit `orderId`)."""


@orders.post("/orders", status_code=202)
def start_order(body: OrderBody, request: Request, response: Response,
                caller: Annotated[Caller, Allowed(Permission.START)], key: IdempotencyKey = None) -> OrderStarted:
    """Start the example order fulfillment saga (what a shop's checkout would call), under the order's
    own id: `GET /api/sagas/<order id>/status` is its status. Only `items` is required; keys in
    camelCase or snake_case; an order without `orderId` is numbered by the shop (`order-123`,
    `order-124`, ...), and what else it leaves out gets the shop's defaults (docs: Getting started).
    The same order posted again is the same run (its id is the idempotency key unless the request
    gives one; an order without an id is the same run only when posted again with the same
    `Idempotency-Key`). The run is recorded as the caller's (a service credential reads it back)."""
    if body.order_id is None and key is not None:  # a retry of a numbered order: the run its key started
        again = get_runtime().store.saga_id_for_key(key)
        if again is not None and get_saga(again).saga_type == "order_fulfillment":
            return _started(request, response, again, get_saga(again).input["order_id"])
    store = get_runtime().store
    for _ in range(NUMBERING_TRIES if body.order_id is None else 1):
        order_id = body.order_id or next_order_id()
        if body.order_id is None and (store.saga_type(order_id) is not None
                                      or store.saga_id_for_key(order_id) is not None):
            continue  # a caller's explicit orderId took this number (the same body would be that order)
        try:
            saga_id = start_owned(caller, "order_fulfillment", body.order(order_id).model_dump(mode="json"),
                                  saga_id=order_id, idempotency_key=key or order_id, version=None)
        except (SagaIdTaken, IdempotencyConflict):
            if body.order_id is not None or key is not None:
                raise
            continue  # the shop's number was taken by an explicit orderId: the next one
        return _started(request, response, saga_id, order_id)
    raise SagaIdTaken(f"the shop's next {NUMBERING_TRIES} order numbers are all taken by explicit order ids; "
                      "post the order with an orderId of its own")


def _started(request: Request, response: Response, saga_id: str, order_id: str) -> OrderStarted:
    response.headers["Location"] = status_path(request, saga_id)
    return OrderStarted(saga_id=saga_id, saga_type="order_fulfillment", order_id=order_id,
                        status_url=status_path(request, saga_id))


# ------------------------------------------------------------------ test mode


class FailNextRequest(BaseModel):
    """Arm a failure in an example service. Every field has a default: no body fails the next payment."""

    service: Literal["inventory", "payment", "shipping", "notification"] = "payment"
    times: int = Field(1, ge=1, le=1000, description="How many calls fail")
    permanent: bool = Field(True, description="Permanent: compensated at once; transient: retried")
    operation: Literal["action", "compensation", "any"] = "action"
    message: str = Field("injected by POST /api/test/fail-next-request", max_length=500)


faults = APIRouter(prefix="/api/test", dependencies=[Authorized, Allowed(Permission.MANAGE)], tags=["test mode"])
"""The failure endpoint: mounted on the API and on the payment service's own app (port 8001)."""
test_mode = APIRouter(prefix="/api/test", dependencies=[Authorized, Allowed(Permission.MANAGE)], tags=["test mode"])


@faults.post("/fail-next-request")
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
    return [orders, faults, test_mode] if settings.test_mode else [orders]
