"""Typed steps (tests/inprocess/test_typed_steps.py): step functions that take and return pydantic models.

Here, not in the test module: a test module imported by another is loaded twice by pytest, with
two sets of its step tasks.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from workflows import PermanentError, RetryPolicy, Saga, Step, StepContext, Wait, register_saga, step_task


class Order(BaseModel):
    """What the charge step reads of the saga's input (the saga itself declares no input model)."""

    order_id: str = Field(min_length=1)
    total: int = Field(gt=0)


class Charged(BaseModel):
    charge_id: str
    amount: int


class Approval(BaseModel):
    approved: bool
    by: str = Field(min_length=1)


received: list[tuple[str, Any]] = []
"""What each typed function received: ('charge', Order(...)), ('refund', Charged(...) or None)."""


@step_task("typed.charge", queue="typed")
def charge(ctx: StepContext, order: Order) -> Charged:
    received.append(("charge", order))
    return Charged(charge_id=f"ch-{order.order_id}", amount=order.total)


@step_task("typed.refund", queue="typed")
def refund(ctx: StepContext, order: Order, charged: Charged | None) -> None:
    received.append(("refund", charged))


@step_task("typed.ship", queue="typed")
def ship(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Untyped, as steps always were: the saga's input as a dict."""
    received.append(("ship", order))
    if order.get("fail_ship"):
        raise PermanentError("no carrier takes this parcel")
    return {"tracking": f"tr-{order['order_id']}"}


@step_task("typed.half_charge", queue="typed")
def half_charge(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Returns a result without `amount`: the step's declared `result_model=Charged` refuses it."""
    received.append(("half_charge", order))
    return {"charge_id": "ch-1", "amount": "a lot"}


ONCE_EACH = RetryPolicy(max_attempts=3, initial_interval=1.0, jitter=False)

TYPED = register_saga(Saga("typed.order", steps=[
    Step("charge", action=charge, compensation=refund, retry=ONCE_EACH),
    Step("ship", action=ship, compensation=None, retry=ONCE_EACH),
]))

BAD_RESULT = register_saga(Saga("typed.bad_result", steps=[
    Step("charge", action=half_charge, compensation=refund, result_model=Charged, retry=ONCE_EACH),
]))

APPROVED = register_saga(Saga("typed.approved", steps=[
    Step("charge", action=charge, compensation=refund, retry=ONCE_EACH),
    Wait("approval", signal="approve", timeout=3600, model=Approval),
]))
