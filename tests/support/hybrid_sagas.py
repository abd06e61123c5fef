"""The hybrid of choreography and orchestration, for the in-process tests (tests/inprocess/test_hybrid.py).

The choreography `inproc_hybrid`: the shop publishes `OrderPlaced`; the service `inproc_fulfilment`
reacts by starting the orchestrated saga `inproc.hybrid_order` under the order's id, and the
service `inproc_payment` by publishing `PaymentSettled`, which answers that saga's wait `payment`
(`OnEvent(..., match="order_id")`). The saga's steps are the in-process tier's (`inproc_steps`).
"""
from __future__ import annotations

from typing import Any

from tests.support.inproc_steps import POLICY, act, undo
from workflows import OnEvent, Saga, Step, Wait, register_saga
from workflows.choreography import Choreography, Envelope, EventContext

HYBRID = Choreography("inproc_hybrid", completed={"PaymentSettled"})
fulfilment = HYBRID.service("inproc_fulfilment")
payment = HYBRID.service("inproc_payment")


def settled(payload: dict[str, Any]) -> bool:
    return bool(payload["approved"])


order = register_saga(Saga("inproc.hybrid_order", steps=[
    Step("reserve", action=act, compensation=undo, retry=POLICY),
    Wait("payment", signal="payment_settled", timeout=600, approve=settled,
         on_event=OnEvent("PaymentSettled", match="order_id", choreography="inproc_hybrid")),
    Step("ship", action=act, compensation=undo, retry=POLICY),
]))


@fulfilment.subscribe("OrderPlaced")
def fulfil(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    saga_id = ctx.start_saga("inproc.hybrid_order", {"order_id": event.payload["order_id"]},
                             saga_id=event.payload["order_id"])
    return {"saga_id": saga_id}


@payment.subscribe("OrderPlaced")
def charge(ctx: EventContext, event: Envelope) -> None:
    ctx.publish("PaymentSettled", {"order_id": event.payload["order_id"],
                                   "approved": event.payload.get("approved", True)})
