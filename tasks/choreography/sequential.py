"""Seed 000's choreography: an order service turns each outcome into the next command.

    OrderCreated -> ReserveInventory -> InventoryReserved -> ProcessPayment -> PaymentProcessed
      -> CreateShipment -> ShipmentCreated -> OrderFulfilled
    InventoryReservationFailed -> OrderFailed                      (nothing to undo)
    PaymentFailed  -> ReleaseInventory + OrderFailed
    ShipmentFailed -> RefundPayment + ReleaseInventory + OrderFailed

The services (orders, inventory, payment, shipping) each consume their own queue
(`events.orders`, ...). Each event carries the order forward, as in the seed. A business refusal
(out of stock, card declined, address not served, or an injected permanent fault) is published as
a failure event; a transient error is retried by the service's policy, then dead-lettered.
"""
from __future__ import annotations

from typing import Any

from workflows import PermanentError, RetryPolicy
from workflows.choreography import Choreography, Envelope, EventContext
from tasks.sagas import EVENT_CARD, Order

from ..common import check_fault
from .. import effects

sequential = Choreography(
    "order_sequential",
    description="Seed 000: reserve, charge, ship, one after the other; the order service directs.",
    completed={"OrderFulfilled"},
    compensating={"InventoryReservationFailed", "PaymentFailed", "ShipmentFailed"},
    compensated={"OrderFailed"},
    events={"InventoryReleased", "PaymentRefunded"},
    schemas={"OrderCreated": Order},
    sensitive=EVENT_CARD,  # sealed in every event that carries the order: the handlers read it in clear
    deadline=60.0,
)

FAST = RetryPolicy(max_attempts=4, initial_interval=0.5, backoff=2.0, max_interval=5.0)
PATIENT = RetryPolicy(max_attempts=8, initial_interval=0.5, backoff=2.0, max_interval=30.0)

orders = sequential.service("orders", retry=FAST)
inventory = sequential.service("inventory", retry=FAST)
payment = sequential.service("payment", retry=FAST)
shipping = sequential.service("shipping", retry=FAST)


def _carry(event: Envelope, **more: Any) -> dict[str, Any]:
    """The order and the ids gathered so far, plus `more`."""
    p = event.payload
    keep: dict[str, Any] = {k: p[k] for k in ("reservation_id", "payment_id", "amount") if k in p}
    return {"order": p.get("order", p), **keep, **more}


# ------------------------------------------------------------------ orders: the seed's OrderChoreographySaga


@orders.subscribe("OrderCreated")
def request_reservation(ctx: EventContext, event: Envelope) -> None:
    ctx.publish("ReserveInventory", {"order": event.payload})


@orders.subscribe("InventoryReserved")
def request_payment(ctx: EventContext, event: Envelope) -> None:
    ctx.publish("ProcessPayment", _carry(event))


@orders.subscribe("PaymentProcessed")
def request_shipment(ctx: EventContext, event: Envelope) -> None:
    ctx.publish("CreateShipment", _carry(event))


@orders.subscribe("ShipmentCreated")
def fulfil(ctx: EventContext, event: Envelope) -> None:
    ctx.publish("OrderFulfilled", _carry(event, tracking_number=event.payload["tracking_number"]))


@orders.subscribe("InventoryReservationFailed")
def fail_unreserved(ctx: EventContext, event: Envelope) -> None:
    ctx.publish("OrderFailed", _carry(event, reason=event.payload["reason"]))


@orders.subscribe("PaymentFailed")
def undo_after_payment_failed(ctx: EventContext, event: Envelope) -> None:
    ctx.publish("ReleaseInventory", _carry(event))
    ctx.publish("OrderFailed", _carry(event, reason=event.payload["reason"]))


@orders.subscribe("ShipmentFailed")
def undo_after_shipment_failed(ctx: EventContext, event: Envelope) -> None:
    ctx.publish("RefundPayment", _carry(event))
    ctx.publish("ReleaseInventory", _carry(event))
    ctx.publish("OrderFailed", _carry(event, reason=event.payload["reason"]))


# ------------------------------------------------------------------ the services that act


@inventory.subscribe("ReserveInventory")
def reserve_inventory(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    order = event.payload["order"]
    try:
        check_fault("inventory", "action")
        r = effects.reserve(ctx.session, ctx.idempotency_key, ctx.saga_id, order["items"])
    except PermanentError as e:
        ctx.publish("InventoryReservationFailed", _carry(event, reason=str(e)))
        return {"reserved": False}
    ctx.publish("InventoryReserved", _carry(event, reservation_id=r.id,
                                            amount=effects.money(effects.order_total(order))))
    return {"reservation_id": r.id}


@inventory.subscribe("ReleaseInventory", retry=PATIENT)
def release_inventory(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    check_fault("inventory", "compensation")
    done = effects.release_or_void(ctx.session, ctx.idempotency_key, ctx.saga_id, event.payload["order"]["items"])
    ctx.publish("InventoryReleased", _carry(event, released=done == "released"))
    return {"release": done}


@payment.subscribe("ProcessPayment")
def process_payment(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    try:
        check_fault("payment", "action")
        p = effects.charge(ctx.session, ctx.idempotency_key, ctx.saga_id, event.payload["order"])
    except PermanentError as e:
        ctx.publish("PaymentFailed", _carry(event, reason=str(e)))
        return {"charged": False}
    ctx.publish("PaymentProcessed", _carry(event, payment_id=p.id, amount=effects.money(p.amount)))
    return {"payment_id": p.id}


@payment.subscribe("RefundPayment", retry=PATIENT)
def refund_payment(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    check_fault("payment", "compensation")
    done = effects.refund_or_void(ctx.session, ctx.idempotency_key, ctx.saga_id, event.payload["order"])
    ctx.publish("PaymentRefunded", _carry(event, refunded=done == "refunded"))
    return {"refund": done}


@shipping.subscribe("CreateShipment")
def create_shipment(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    order = event.payload["order"]
    try:
        check_fault("shipping", "action")
        sh = effects.ship(ctx.session, ctx.idempotency_key, ctx.saga_id, order.get("shipping_address") or {})
    except PermanentError as e:
        ctx.publish("ShipmentFailed", _carry(event, reason=str(e)))
        return {"shipped": False}
    ctx.publish("ShipmentCreated", _carry(event, shipment_id=sh.id, tracking_number=sh.tracking_number))
    return {"tracking_number": sh.tracking_number}
