"""Notification service: the order confirmation. Once sent it cannot be unsent, so the
saga declares no compensation for it (explicitly)."""
from __future__ import annotations

from typing import Any

from workflows import StepContext, step_task

from . import effects
from .common import already_done, check_fault, transaction
from .models import Notification


@step_task("notification.send_confirmation", queue="notification")
def send_confirmation(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    if already_done(Notification, ctx.idempotency_key) is None:
        check_fault("notification", "action")
        with transaction() as s:
            effects.notify(s, ctx.idempotency_key, ctx.saga_id, order.get("email") or order["customer_id"])
    shipment = ctx.results.get("create_shipment") or ctx.results.get("shipping", {}).get("create_shipment", {})
    return {"sent": True, "tracking_number": shipment.get("tracking_number")}  # a step's, or a shipping saga's
