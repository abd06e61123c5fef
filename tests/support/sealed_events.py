"""A choreography whose events carry a card, for tests/inprocess/test_sealed_events.py.

`inproc_sealed`: the shop publishes `CardOrderPlaced` (its `payment.card` sealed, checked by a
schema); the service `inproc_sealed_pay` charges it and publishes `CardCharged` carrying the order
on (`order.payment.card`, sealed too) and a `pin` (sealed in that event type only), which answers
the wait of the saga `inproc.sealed_wait` (`OnEvent`; `inproc.sealed_signal`'s wait declares the
`pin` sensitive itself, for signals); the service `inproc_sealed_note` records
what it read. Every handler notes the card it was given in `seen`.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from workflows import OnEvent, Saga, Step, StepContext, Wait, register_saga, step_task
from workflows.choreography import Choreography, Envelope, EventContext

seen: list[tuple[str, Any]] = []
"""(who, the card or pin it read), in the order read."""


class Payment(BaseModel):
    card: str = Field(pattern=r"^\d{12,19}$")


class CardOrder(BaseModel):
    order_id: str
    payment: Payment


SEALED = Choreography("inproc_sealed", completed={"CardCharged"}, schemas={"CardOrderPlaced": CardOrder},
                      sensitive=("payment.card", "order.payment.card"), events={"CardNoted"})
SEALED_PIN = Choreography("inproc_sealed_pin", completed={"PinSent"},
                          sensitive={"PinSent": ("pin",)})
pay = SEALED.service("inproc_sealed_pay")
note = SEALED.service("inproc_sealed_note")


@pay.subscribe("CardOrderPlaced")
def charge(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    seen.append(("charge", event.payload["payment"]["card"]))
    ctx.publish("CardCharged", {"order": event.payload, "last4": event.payload["payment"]["card"][-4:]})
    return {"charged": True}


@note.subscribe("CardCharged")
def noted(ctx: EventContext, event: Envelope) -> None:
    seen.append(("note", event.payload["order"]["payment"]["card"]))


@step_task("sealed_events.use_pin", queue="sealed")
def use_pin(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    seen.append(("step", ctx.results["pin"]["pin"]))
    return {"used": True}


@step_task("sealed_events.forget_pin", queue="sealed")
def forget_pin(ctx: StepContext, data: dict[str, Any]) -> None:
    return None


register_saga(Saga("inproc.sealed_wait", steps=[  # its wait declares nothing: the event's declaration seals
    Wait("pin", signal="pin", timeout=600,
         on_event=OnEvent("PinSent", match="order_id", choreography="inproc_sealed_pin")),
    Step("use", action=use_pin, compensation=forget_pin),
]))
register_saga(Saga("inproc.sealed_signal", steps=[
    Wait("pin", signal="pin", timeout=600, sensitive=("pin",)),
    Step("use", action=use_pin, compensation=forget_pin),
]))
