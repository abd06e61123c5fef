"""Seed 001's choreography: payment and inventory react to OrderCreated at the same time.

    OrderCreated -> payment: charge          -> PaymentProcessed   \\
                 -> inventory: reserve       -> InventoryReserved  / -> orders: both? -> OrderCompleted
                                                                        -> notification -> ConfirmationSent
    InventoryReservationFailed -> payment: refund (or void) -> PaymentRefunded  -> orders -> OrderCancelled
    PaymentFailed              -> inventory: release (or void) -> InventoryReleased -> orders -> OrderCancelled

Events overtake each other. If InventoryReservationFailed reaches payment before OrderCreated
does (the charge is being retried, or is simply slower), the refund finds no charge and leaves a
VOIDED payment under the charge's key; the late charge finds it and charges nothing. Both paths
end the same way: no payment kept. The order service joins the two branches with its own history
(`ctx.handled`), which serializes its handlers of one saga, so OrderCompleted and OrderCancelled
are each published once.
"""
from __future__ import annotations

from typing import Any

from workflows import PermanentError, RetryPolicy
from workflows.choreography import Choreography, Envelope, EventContext
from tasks.sagas import EVENT_CARD, Order

from ..common import check_fault
from .. import effects

parallel = Choreography(
    "order_parallel",
    description="Seed 001: payment and inventory in parallel; failures undone by the other service.",
    completed={"OrderCompleted"},
    compensating={"InventoryReservationFailed", "PaymentFailed"},
    compensated={"OrderCancelled"},
    events={"ConfirmationSent"},
    schemas={"OrderCreated": Order},
    sensitive=EVENT_CARD,  # sealed in every event that carries the order: the handlers read it in clear
    deadline=60.0,
)

STEADY = RetryPolicy(max_attempts=5, initial_interval=1.0, backoff=2.0, max_interval=10.0, jitter=False)
"""Retries 1 s, 2 s, 4 s, 8 s apart: long enough that a failure elsewhere overtakes a retried charge."""
PATIENT = RetryPolicy(max_attempts=8, initial_interval=0.5, backoff=2.0, max_interval=30.0)

orders = parallel.service("orders")
payment = parallel.service("payment", retry=STEADY)
inventory = parallel.service("inventory", retry=STEADY)
notification = parallel.service("notification")


def _ref(event: Envelope, **more: Any) -> dict[str, Any]:
    order = event.payload.get("order", event.payload)
    return {"order": order, **more}


@payment.subscribe("OrderCreated")
def charge(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    try:
        check_fault("payment", "action")
        p = effects.charge(ctx.session, ctx.idempotency_key, ctx.saga_id, event.payload)
    except PermanentError as e:
        ctx.publish("PaymentFailed", _ref(event, reason=str(e)))
        return {"charged": False}
    if p.status == "VOIDED":  # the order was cancelled before we got here: never charge it
        return {"charged": False, "reason": "order already cancelled"}
    ctx.publish("PaymentProcessed", _ref(event, payment_id=p.id, amount=effects.money(p.amount)))
    return {"payment_id": p.id}


@payment.subscribe("InventoryReservationFailed", retry=PATIENT)
def refund(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    check_fault("payment", "compensation")
    done = effects.refund_or_void(ctx.session, ctx.idempotency_key, ctx.saga_id, event.payload["order"])
    ctx.publish("PaymentRefunded", _ref(event, refunded=done == "refunded", voided=done == "voided"))
    return {"refund": done}


@inventory.subscribe("OrderCreated")
def reserve(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    try:
        check_fault("inventory", "action")
        r = effects.reserve(ctx.session, ctx.idempotency_key, ctx.saga_id, event.payload["items"])
    except PermanentError as e:
        ctx.publish("InventoryReservationFailed", _ref(event, reason=str(e)))
        return {"reserved": False}
    if r.status == "VOIDED":
        return {"reserved": False, "reason": "order already cancelled"}
    ctx.publish("InventoryReserved", _ref(event, reservation_id=r.id))
    return {"reservation_id": r.id}


@inventory.subscribe("PaymentFailed", retry=PATIENT)
def release(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    check_fault("inventory", "compensation")
    done = effects.release_or_void(ctx.session, ctx.idempotency_key, ctx.saga_id, event.payload["order"]["items"])
    ctx.publish("InventoryReleased", _ref(event, released=done == "released", voided=done == "voided"))
    return {"release": done}


@orders.subscribe("InventoryReserved")
@orders.subscribe("PaymentProcessed")
def complete_when_both_done(ctx: EventContext, event: Envelope) -> None:
    other = "PaymentProcessed" if event.event_type == "InventoryReserved" else "InventoryReserved"
    if ctx.handled(other) and not ctx.published("OrderCompleted"):
        ctx.publish("OrderCompleted", _ref(event))


@orders.subscribe("PaymentRefunded")
@orders.subscribe("InventoryReleased")
def cancel_when_all_undone(ctx: EventContext, event: Envelope) -> None:
    waiting = set()
    if ctx.published("InventoryReservationFailed"):
        waiting.add("PaymentRefunded")
    if ctx.published("PaymentFailed"):
        waiting.add("InventoryReleased")
    waiting.discard(event.event_type)
    if all(ctx.handled(t) for t in waiting) and not ctx.published("OrderCancelled"):
        failures = (_failure(ctx, "InventoryReservationFailed"), _failure(ctx, "PaymentFailed"))
        reason = "; ".join(r for r in failures if r)
        ctx.publish("OrderCancelled", _ref(event, reason=reason or "cancelled"))


def _failure(ctx: EventContext, event_type: str) -> str:
    return event_type if ctx.published(event_type) else ""


@notification.subscribe("OrderCompleted")
async def confirm(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    """An `async def` handler: the bus runs it to completion; `await ctx.publish(...)` works too."""
    check_fault("notification", "action")
    order = event.payload["order"]
    sent = effects.notify(ctx.session, ctx.idempotency_key, ctx.saga_id, order.get("email") or order["customer_id"])
    await ctx.publish("ConfirmationSent", _ref(event, first_time=sent))
    return {"sent": sent}
