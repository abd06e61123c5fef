"""Shipping service: shipments and their cancellation (step tasks over `tasks.effects`)."""
from __future__ import annotations

from typing import Any

from workflows import StepContext, step_task

from . import effects
from .common import already_done, check_fault, transaction
from .effects import UNSERVED_COUNTRIES, UndeliverableAddress
from .models import Shipment

__all__ = ["UNSERVED_COUNTRIES", "UndeliverableAddress", "cancel_shipment", "create_shipment"]


@step_task("shipping.create", queue="shipping")
def create_shipment(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    done = already_done(Shipment, ctx.idempotency_key)
    if done is None:
        check_fault("shipping", "action")
        with transaction() as s:
            done = effects.ship(s, ctx.idempotency_key, ctx.saga_id, order.get("shipping_address") or {})
    return {"shipment_id": done.id, "tracking_number": done.tracking_number, "status": done.status}


@step_task("shipping.cancel", queue="shipping")
def cancel_shipment(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    done = already_done(Shipment, ctx.idempotency_key)
    if done is not None and done.status != "CREATED":
        return {"outcome": "nothing"}
    check_fault("shipping", "compensation")
    with transaction() as s:
        return {"outcome": effects.cancel_or_void(s, ctx.idempotency_key, ctx.saga_id,
                                                  order.get("shipping_address") or {})}
