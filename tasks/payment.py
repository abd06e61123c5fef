"""Payment service: charges and refunds (step tasks over `tasks.effects`)."""
from __future__ import annotations

from typing import Any

from workflows import StepContext, step_task

from . import effects
from .common import already_done, check_fault, transaction
from .effects import DECLINED_CARDS, LIMIT, CardDeclined, order_total
from .models import Payment

__all__ = ["DECLINED_CARDS", "LIMIT", "CardDeclined", "charge_payment", "order_total", "refund_payment"]


@step_task("payment.charge", queue="payment")
def charge_payment(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the order total to the customer's card, once per idempotency key. The gateway may
    fail after taking the money (fault "after_action"): a step declaring `compensate_failure`
    refunds it."""
    done = already_done(Payment, ctx.idempotency_key)
    if done is None:
        check_fault("payment", "action")
        with transaction() as s:
            done = effects.charge(s, ctx.idempotency_key, ctx.saga_id, order)
        check_fault("payment", "after_action")
    return {"payment_id": done.id, "amount": effects.money(done.amount), "status": done.status}


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
