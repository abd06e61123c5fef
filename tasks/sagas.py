"""The saga definitions this deployment runs: the example order fulfillment, as a line, with its
stock and payment steps in parallel, with a manager's approval for an order above a limit, and as a
checkout that runs a shipping saga of its own."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from tasks.inventory import release_reservation, reserve_items
from tasks.notification import send_confirmation
from tasks.payment import CardDeclined, charge_payment, refund_payment
from tasks.shipping import cancel_shipment, create_shipment

from workflows.core.definition import Child, OnEvent, Parallel, Saga, Step, Wait, register_saga
from workflows.core.retry import RetryPolicy


class Item(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=1000)
    price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)


class Address(BaseModel):
    name: str = Field(min_length=1)
    street: str = Field(min_length=1)
    city: str = Field(min_length=1)
    country: str = Field(min_length=2, max_length=2)


class PaymentMethod(BaseModel):
    card: str = Field(pattern=r"^\d{12,19}$")


CARD = ("payment.card",)
"""The order's card number: sealed before the run is written or sent, opened only for the step
function (docs: operations/security, "Sensitive fields")."""
EVENT_CARD = ("payment.card", "order.payment.card")
"""The card in a choreography's events: in the order itself (`OrderCreated`), or in the order an
event carries on (`{"order": {...}}`); an event without it has nothing to seal."""


class Order(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    email: str | None = None
    items: list[Item] = Field(min_length=1)
    payment: PaymentMethod
    shipping_address: Address


order_fulfillment = register_saga(Saga(
    "order_fulfillment",
    input_model=Order,
    sensitive=CARD,
    description="Reserve stock, charge the card, book the shipment, confirm by e-mail.",
    steps=[
        Step("reserve_inventory", action=reserve_items, compensation=release_reservation, timeout=30),
        Step("process_payment", action=charge_payment, compensation=refund_payment, timeout=30,
             retry=RetryPolicy(max_attempts=5, initial_interval=0.5, backoff=2.0, max_interval=10,
                               non_retryable=(CardDeclined,))),
        Step("create_shipment", action=create_shipment, compensation=cancel_shipment, timeout=30),
        Step("send_confirmation", action=send_confirmation, compensation=None, timeout=30),  # nothing to undo
    ],
))


order_fulfillment_parallel = register_saga(Saga(
    "order_fulfillment_parallel",
    input_model=Order,
    sensitive=CARD,
    description="The seeds' parallel order: reserve stock and charge the card at once, then ship and confirm.",
    steps=[
        Parallel("prepare", [
            Step("reserve_inventory", action=reserve_items, compensation=release_reservation, timeout=30),
            Step("process_payment", action=charge_payment, compensation=refund_payment, timeout=30,
                 retry=RetryPolicy(max_attempts=5, initial_interval=0.5, backoff=2.0, max_interval=10,
                                   non_retryable=(CardDeclined,))),
        ]),
        Step("create_shipment", action=create_shipment, compensation=cancel_shipment, timeout=30),
        Step("send_confirmation", action=send_confirmation, compensation=None, timeout=30),
    ],
))


APPROVAL_LIMIT = Decimal("100.00")
"""An order whose total is above this waits for a manager's approval."""


class Approval(BaseModel):
    """The payload of the signal `approval`: what the manager decided, and why."""

    approved: bool
    reason: str = Field(default="", max_length=500)


def above_limit(order: dict[str, Any]) -> bool:
    return sum(Decimal(str(i["price"])) * i["quantity"] for i in order["items"]) > APPROVAL_LIMIT


def approved(approval: dict[str, Any]) -> bool:
    return bool(approval["approved"])


order_with_approval = register_saga(Saga(
    "order_approval",
    input_model=Order,
    sensitive=CARD,
    description=f"Reserve stock; above {APPROVAL_LIMIT} wait up to two days for a manager's approval (signal "
                "'approval'); then charge, ship and confirm. A rejection or no answer releases the stock.",
    steps=[
        Step("reserve_inventory", action=reserve_items, compensation=release_reservation, timeout=30),
        Wait("manager_approval", signal="approval", timeout=timedelta(days=2), on_timeout="compensate",
             model=Approval, approve=approved, when=above_limit),
        Step("process_payment", action=charge_payment, compensation=refund_payment, timeout=30,
             retry=RetryPolicy(max_attempts=5, initial_interval=0.5, backoff=2.0, max_interval=10,
                               non_retryable=(CardDeclined,))),
        Step("create_shipment", action=create_shipment, compensation=cancel_shipment, timeout=30),
        Step("send_confirmation", action=send_confirmation, compensation=None, timeout=30),
    ],
))


order_shipping = register_saga(Saga(
    "order_shipping",
    input_model=Order,
    sensitive=CARD,
    description="Book the shipment of an order (run as the child saga of a checkout).",
    steps=[Step("create_shipment", action=create_shipment, compensation=cancel_shipment, timeout=30)],
))


order_with_shipping = register_saga(Saga(
    "order_with_shipping",
    input_model=Order,
    sensitive=CARD,
    description="Reserve stock, ship through the order_shipping saga, charge the card on dispatch, confirm.",
    steps=[
        Step("reserve_inventory", action=reserve_items, compensation=release_reservation, timeout=30),
        Child("shipping", saga="order_shipping", input=lambda order, results: order),  # a saga of its own
        Step("process_payment", action=charge_payment, compensation=refund_payment, timeout=30,
             retry=RetryPolicy(max_attempts=5, initial_interval=0.5, backoff=2.0, max_interval=10,
                               non_retryable=(CardDeclined,))),
        Step("send_confirmation", action=send_confirmation, compensation=None, timeout=30),
    ],
))


class Settlement(BaseModel):
    """The payload of `PaymentSettled` (the checkout choreography's payment service) as the wait reads it."""

    order_id: str
    approved: bool
    reason: str = ""
    payment_id: int | None = None
    amount: str | None = None


order_paid_fulfillment = register_saga(Saga(
    "order_paid_fulfillment",
    input_model=Order,
    sensitive=CARD,  # sealed in the run, as in the checkout choreography's OrderPlaced that starts it
    description="The hybrid's orchestrated half: started by the checkout choreography's OrderPlaced; reserve "
                "stock, wait for the choreography's PaymentSettled event, then ship and confirm.",
    steps=[
        Step("reserve_inventory", action=reserve_items, compensation=release_reservation, timeout=30),
        Wait("payment_settled", signal="payment_settled", timeout=timedelta(minutes=10), model=Settlement,
             approve=approved, on_event=OnEvent("PaymentSettled", match="order_id", choreography="order_checkout")),
        Step("create_shipment", action=create_shipment, compensation=cancel_shipment, timeout=30),
        Step("send_confirmation", action=send_confirmation, compensation=None, timeout=30),
    ],
))
