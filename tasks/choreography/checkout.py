"""The hybrid: a choreographed checkout that hands fulfilment to an orchestrated saga.

    shop ──OrderPlaced──> fulfilment: start the saga `order_paid_fulfillment` under the order's id
                     └──> payment: charge the card ──PaymentSettled──> answers the saga's wait

The shop publishes `OrderPlaced`; two services react at once. The fulfilment service starts the
orchestrated saga (`ctx.start_saga`, in its own transaction: the saga's history names the event,
this flow's history names the saga). The payment service charges the card, as the choreographies'
payment services do, and publishes `PaymentSettled` (approved, or declined with the reason). That
event answers the saga's wait `payment_settled` (`OnEvent("PaymentSettled", match="order_id")`),
whether the saga is already parked on it or has not reached it yet: the saga then ships and
confirms, or, declined, releases the stock it reserved.
"""
from __future__ import annotations

from typing import Any

from workflows import PermanentError
from workflows.choreography import Choreography, Envelope, EventContext
from tasks.sagas import CARD, Order

from .. import effects
from ..common import check_fault

checkout = Choreography(
    "order_checkout",
    description="The hybrid: OrderPlaced starts the orchestrated fulfilment; PaymentSettled answers its wait.",
    completed={"PaymentSettled"},
    schemas={"OrderPlaced": Order},
    sensitive={"OrderPlaced": CARD},  # sealed on the bus and in the flow's history; the handlers read it in clear
    deadline=60.0,
)

fulfilment = checkout.service("fulfilment")
payment = checkout.service("checkout_payment")


@fulfilment.subscribe("OrderPlaced")
def fulfil(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    """Start the orchestrated fulfilment under the order's own id (so the payment's event finds it)."""
    saga_id = ctx.start_saga("order_paid_fulfillment", event.payload, saga_id=event.payload["order_id"])
    return {"saga_id": saga_id}


@payment.subscribe("OrderPlaced")
def settle(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    order = event.payload
    try:
        check_fault("payment", "action")
        p = effects.charge(ctx.session, ctx.idempotency_key, ctx.saga_id, order)
    except PermanentError as e:
        ctx.publish("PaymentSettled", {"order_id": order["order_id"], "approved": False, "reason": str(e)})
        return {"charged": False}
    ctx.publish("PaymentSettled", {"order_id": order["order_id"], "approved": True, "payment_id": p.id,
                                   "amount": effects.money(p.amount)})
    return {"payment_id": p.id}
