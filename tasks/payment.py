"""Payment service: charges and refunds."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select

from workflows import PermanentError, StepContext, step_task

from .common import already_done, check_fault, now, transaction
from .models import Payment

DECLINED_CARDS = {"4000000000000002"}
LIMIT = Decimal("10000")


class CardDeclined(PermanentError):
    """The card was declined: retrying will not help."""


def order_total(order: dict[str, Any]) -> Decimal:
    return sum((Decimal(str(i["price"])) * i["quantity"] for i in order["items"]), Decimal("0"))


@step_task("payment.charge", queue="payment")
def charge_payment(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the order total to the customer's card, once per idempotency key."""
    done = already_done(Payment, ctx.idempotency_key)
    if done is not None:
        return {"payment_id": done.id, "amount": str(done.amount)}
    check_fault("payment", "action")
    total = order_total(order)
    card = str(order.get("payment", {}).get("card", ""))
    with transaction() as s:
        existing = s.scalars(select(Payment).where(Payment.idempotency_key == ctx.idempotency_key)).first()
        if existing is not None:
            return {"payment_id": existing.id, "amount": str(existing.amount)}
        if card in DECLINED_CARDS:
            raise CardDeclined(f"card ending {card[-4:]} was declined")
        if total > LIMIT:
            raise CardDeclined(f"amount {total} is over the card limit of {LIMIT}")
        p = Payment(idempotency_key=ctx.idempotency_key, saga_id=ctx.saga_id, customer_id=order["customer_id"],
                    amount=total, status="CHARGED", created_at=now())
        s.add(p)
        s.flush()
        return {"payment_id": p.id, "amount": str(total)}


@step_task("payment.refund", queue="payment")
def refund_payment(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Refund the step's charge, once. A charge that never happened needs nothing."""
    check_fault("payment", "compensation")
    with transaction() as s:
        p = s.scalars(select(Payment).where(Payment.idempotency_key == ctx.idempotency_key)
                      .with_for_update()).first()
        if p is None or p.status != "CHARGED":
            return {"refunded": False}
        p.status, p.refunded_at = "REFUNDED", now()
        return {"refunded": True, "payment_id": p.id}
