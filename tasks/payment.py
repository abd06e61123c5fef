"""Payment service: charges and refunds (step tasks over `tasks.effects`)."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from workflows import StepContext, step_task

from . import effects
from .common import already_done, check_fault, transaction
from .effects import DECLINED_CARDS, LIMIT, CardDeclined, order_total
from .models import Payment

__all__ = ["DECLINED_CARDS", "LIMIT", "CardDeclined", "Charged", "charge_payment", "order_total", "refund_payment"]


class Charged(BaseModel):
    """The payment step's result (a typed step: checked when the step reports, its JSON schema served
    by `GET /api/saga-types`)."""

    payment_id: int = Field(gt=0)
    amount: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    status: str = Field(description="CHARGED; VOIDED when a refund got there first")
    card_last4: str = Field("", description="The last four digits of the card charged (the card itself is sealed)")


@step_task("payment.charge", queue="payment")
def charge_payment(ctx: StepContext, order: dict[str, Any]) -> Charged:
    """Charge the order total to the customer's card, once per idempotency key. The gateway may
    fail after taking the money (fault "after_action"): a step declaring `compensate_failure`
    refunds it."""
    done = already_done(Payment, ctx.idempotency_key)
    if done is None:
        check_fault("payment", "action")
        with transaction() as s:
            done = effects.charge(s, ctx.idempotency_key, ctx.saga_id, order)
        check_fault("payment", "after_action")
    card = str(order.get("payment", {}).get("card", ""))
    return Charged(payment_id=done.id, amount=Decimal(effects.money(done.amount)), status=done.status,
                   card_last4=card[-4:])


@step_task("payment.refund", queue="payment")
def refund_payment(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Refund the step's charge, once. A charge that never happened is voided (a late one then finds
    the tombstone); one already refunded or voided is left alone. Compensating a charge that failed
    (`ctx.error` set) is the same: whatever the gateway did before failing is undone, or nothing is."""
    done = already_done(Payment, ctx.idempotency_key)
    if done is not None and done.status != "CHARGED":
        return {"outcome": "nothing"}
    check_fault("payment", "compensation")
    with transaction() as s:
        return {"outcome": effects.refund_or_void(s, ctx.idempotency_key, ctx.saga_id, order)}
