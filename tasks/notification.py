"""Notification service: the order confirmation. Once sent it cannot be unsent, so the
saga declares no compensation for it (explicitly)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select

from workflows import StepContext, step_task

from .common import already_done, check_fault, now, transaction
from .models import Notification


@step_task("notification.send_confirmation", queue="notification")
def send_confirmation(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    if already_done(Notification, ctx.idempotency_key) is None:
        check_fault("notification", "action")
    tracking = ctx.results.get("create_shipment", {}).get("tracking_number")
    with transaction() as s:
        existing = s.scalars(select(Notification).where(Notification.idempotency_key == ctx.idempotency_key)).first()
        if existing is None:
            s.add(Notification(idempotency_key=ctx.idempotency_key, saga_id=ctx.saga_id, kind="order_confirmation",
                               recipient=order.get("email") or order["customer_id"], created_at=now()))
    return {"sent": True, "tracking_number": tracking}
