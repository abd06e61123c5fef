"""Step functions of the sealed-field tests (tests/inprocess/test_sealed_fields.py): each records
the input it was given, so a test can check the function saw the clear value.

`seen` is cleared by the tests that read it."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from workflows import PermanentError, Saga, Step, StepContext, register_saga, step_task

seen: list[tuple[str, str, Any]] = []
"""(kind, step, the card the function was given) of every call."""


class Payment(BaseModel):
    card: str = Field(pattern=r"^\d{12,19}$")


class CardOrder(BaseModel):
    order_id: str
    payment: Payment
    decline: bool = False


def _card(data: dict[str, Any]) -> Any:
    return data.get("payment", {}).get("card")


@step_task("sealed.charge", queue="sealed")
def charge(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    seen.append((ctx.kind, ctx.step, _card(data)))
    assert _card(ctx.input) == _card(data)  # the context's input is the clear one too
    if data.get("decline"):
        raise PermanentError(f"card ending {str(_card(data))[-4:]} was declined")
    return {"last4": str(_card(data))[-4:]}


@step_task("sealed.refund", queue="sealed")
def refund(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    seen.append((ctx.kind, ctx.step, _card(data)))
    return {"refunded": True}


@step_task("sealed.typed", queue="sealed")
def typed(ctx: StepContext, order: CardOrder) -> dict[str, Any]:
    seen.append((ctx.kind, ctx.step, order.payment.card))
    return {"typed_last4": order.payment.card[-4:]}


@step_task("sealed.rotation_charge", queue="sealed_rotation")
def rotation_charge(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    """Charges the card it is given (a server test's worker: its result names the last four digits)."""
    return {"last4": str(_card(data))[-4:]}


@step_task("sealed.rotation_refund", queue="sealed_rotation")
def rotation_refund(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    return {"refunded": str(_card(data))[-4:]}


ROTATION = register_saga(Saga("sealed.rotation", sensitive=("payment.card",), input_model=CardOrder, steps=[
    Step("charge", action=rotation_charge, compensation=rotation_refund),
    Step("again", action=rotation_charge, compensation=None),
]))
"""The saga of tests/servers/test_key_rotation.py, on a queue only its worker consumes."""


@step_task("sealed.tokenize", queue="sealed")
def tokenize(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    """A result with a sensitive field (`token`, the card itself here) beside a plain one."""
    seen.append((ctx.kind, ctx.step, _card(data)))
    return {"token": f"tok-{_card(data)}", "last4": str(_card(data))[-4:]}


@step_task("sealed.detokenize", queue="sealed")
def detokenize(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    """A compensation: its action's result, opened."""
    seen.append((ctx.kind, ctx.step, (ctx.result or {}).get("token")))
    return {"undone": True}


@step_task("sealed.use_token", queue="sealed")
def use_token(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    """A later step: the earlier result, opened; fails for good when the input says `decline`."""
    seen.append((ctx.kind, ctx.step, ctx.results["tokenize"]["token"]))
    if data.get("decline"):
        raise PermanentError("declined")
    return {"used": True}
