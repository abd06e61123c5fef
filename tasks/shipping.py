"""Shipping service: shipments and their cancellation."""
from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select

from workflows import PermanentError, StepContext, step_task

from .common import already_done, check_fault, now, transaction
from .models import Shipment

UNSERVED_COUNTRIES = {"XX"}


class UndeliverableAddress(PermanentError):
    """No carrier serves the address: retrying will not help."""


@step_task("shipping.create", queue="shipping")
def create_shipment(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    done = already_done(Shipment, ctx.idempotency_key)
    if done is not None:
        return {"shipment_id": done.id, "tracking_number": done.tracking_number}
    check_fault("shipping", "action")
    address = order.get("shipping_address") or {}
    if address.get("country") in UNSERVED_COUNTRIES:
        raise UndeliverableAddress(f"no carrier delivers to country {address.get('country')!r}")
    with transaction() as s:
        existing = s.scalars(select(Shipment).where(Shipment.idempotency_key == ctx.idempotency_key)).first()
        if existing is not None:
            return {"shipment_id": existing.id, "tracking_number": existing.tracking_number}
        tracking = "TRK" + hashlib.sha1(ctx.idempotency_key.encode()).hexdigest()[:10].upper()
        sh = Shipment(idempotency_key=ctx.idempotency_key, saga_id=ctx.saga_id, tracking_number=tracking,
                      address=address, status="CREATED", created_at=now())
        s.add(sh)
        s.flush()
        return {"shipment_id": sh.id, "tracking_number": tracking}


@step_task("shipping.cancel", queue="shipping")
def cancel_shipment(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    check_fault("shipping", "compensation")
    with transaction() as s:
        sh = s.scalars(select(Shipment).where(Shipment.idempotency_key == ctx.idempotency_key)
                       .with_for_update()).first()
        if sh is None or sh.status != "CREATED":
            return {"cancelled": False}
        sh.status, sh.cancelled_at = "CANCELLED", now()
        return {"cancelled": True}
