"""What the shop's checkout (`POST /api/orders`) accepts, and the defaults it fills in.

The body may be as small as the seed's walkthrough sends it:

    {"items": [{"productId": "123", "quantity": 2}]}

Keys are accepted in camelCase (`orderId`, `customerId`, `productId`, `shippingAddress`) or in
snake_case (`order_id`, `sku`, ...). What the body leaves out gets the example shop's documented
defaults (`DEFAULTS` below, docs/getting-started.md): the saga itself always receives a complete
`Order`, so its steps never guess.

- no order id: the shop numbers the order `order-<n>` from its own counter (`shop_counters`),
  and the numbers start at `FIRST_ORDER_NUMBER` (123): a fresh deployment's first such order is
  `order-123`, the id the seed's walkthrough then asks the status of;
- no price: the example's list price, `LIST_PRICE` (the example shop has no catalog);
- no customer, e-mail, card or address: a guest, no e-mail, the example gateway's test card,
  and the example's pickup address.
"""
from __future__ import annotations

from decimal import Decimal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tasks.common import transaction
from tasks.models import Counter
from tasks.sagas import Address, Item, Order, PaymentMethod

FIRST_ORDER_NUMBER = 123
"""The number of a fresh shop's first order posted without an id (`order-123`)."""
LIST_PRICE = Decimal("10.00")
"""The unit price of an item posted without one."""
GUEST = "guest"
TEST_CARD = "4242424242424242"
"""The example gateway's test card: always accepted (tasks/effects.py declines 4000000000000002)."""
PICKUP = Address(name="Guest", street="Pickup counter, 1 Example Street", city="Berlin", country="DE")

DEFAULTS = {"order_id": f"order-<n>, numbered from {FIRST_ORDER_NUMBER}", "customer_id": GUEST, "email": None,
            "items[].price": str(LIST_PRICE), "payment.card": TEST_CARD, "shipping_address": PICKUP.model_dump()}
"""What an order body may leave out, and what the shop puts there (docs, and the tests that check them)."""


class _Body(BaseModel):
    """camelCase or snake_case keys, unknown keys refused (a typo is an error, not a silent default)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ItemBody(_Body):
    sku: str = Field(min_length=1, max_length=64, validation_alias=AliasChoices("sku", "productId", "product_id"),
                     description="The product: `productId` or `sku`")
    quantity: int = Field(gt=0, le=1000)
    price: Decimal = Field(LIST_PRICE, ge=0, max_digits=12, decimal_places=2,
                           description=f"Unit price; default the list price, {LIST_PRICE}")


class AddressBody(_Body):
    name: str = Field(min_length=1)
    street: str = Field(min_length=1)
    city: str = Field(min_length=1)
    country: str = Field(min_length=2, max_length=2)


class PaymentBody(_Body):
    card: str = Field(pattern=r"^\d{12,19}$")


class OrderBody(_Body):
    """An order as the checkout posts it. Only `items` is required."""

    order_id: str | None = Field(None, min_length=1, max_length=64,
                                 description=f"Default: the shop's next number, order-<n> from {FIRST_ORDER_NUMBER}")
    customer_id: str = Field(GUEST, min_length=1, max_length=64)
    email: str | None = None
    items: list[ItemBody] = Field(min_length=1)
    payment: PaymentBody = Field(default_factory=lambda: PaymentBody(card=TEST_CARD))
    shipping_address: AddressBody = Field(default_factory=lambda: AddressBody(**PICKUP.model_dump()))

    def order(self, order_id: str) -> Order:
        """The complete order the saga receives, under `order_id`."""
        return Order(order_id=order_id, customer_id=self.customer_id, email=self.email,
                     items=[Item(sku=i.sku, quantity=i.quantity, price=i.price) for i in self.items],
                     payment=PaymentMethod(card=self.payment.card),
                     shipping_address=Address(**self.shipping_address.model_dump()))


def next_order_id() -> str:
    """The shop's next order id, `order-<n>`: one counter row, incremented in one statement (two
    checkouts at once get two numbers; a number whose order then fails to start is skipped)."""
    with transaction() as s:
        insert = pg_insert if s.bind.dialect.name == "postgresql" else sqlite_insert  # type: ignore[union-attr]
        s.execute(insert(Counter).values(name="order", value=FIRST_ORDER_NUMBER - 1)
                  .on_conflict_do_nothing(index_elements=[Counter.name]))
        n = s.execute(update(Counter).where(Counter.name == "order").values(value=Counter.value + 1)
                      .returning(Counter.value)).scalar_one()
    return f"order-{n}"
