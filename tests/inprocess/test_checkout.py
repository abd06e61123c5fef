"""The shop's checkout body (tasks/checkout.py) and `POST /api/orders` in process: the seed's minimal
order accepted with the documented defaults, camelCase and snake_case alike, orders without an id
numbered from order-123, and the seed's order compensating when the payment service's switch is
armed. SQLite with the shop's tables, the test kit's worker; no server (the same three commands
against real processes: tests/servers/test_seed_commands.py)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import tasks.sagas  # noqa: F401  (registers the shop's sagas)
from tasks import schema
from tasks.checkout import DEFAULTS, FIRST_ORDER_NUMBER, LIST_PRICE, TEST_CARD, OrderBody, next_order_id
from tasks.common import effects_of
from tasks.inventory import available
from tasks.shop_api import routers
from workflows.interfaces.api import create_app
from workflows.runtime.container import Runtime
from workflows.testing import SagaKit

SEED_ORDER = {"items": [{"productId": "123", "quantity": 2}]}
"""The seed walkthrough's order body, as it writes it."""


@pytest.fixture
def saga_migrate() -> Callable[[str], None]:
    return schema.migrate  # the saga tables and the shop's own (with its starting stock)


@pytest.fixture
def client(saga_runtime: Runtime) -> Iterator[TestClient]:
    settings = saga_runtime.settings.model_copy(update={"api_token": None, "test_mode": True})
    with TestClient(create_app(settings, runtime=saga_runtime, routers=routers(settings))) as c:
        yield c


# ------------------------------------------------------------------ the body


def test_the_seeds_minimal_order_gets_the_documented_defaults() -> None:
    order = OrderBody.model_validate(SEED_ORDER).order("order-123").model_dump(mode="json")

    assert order == {"order_id": "order-123", "customer_id": "guest", "email": None,
                     "items": [{"sku": "123", "quantity": 2, "price": "10.00"}],
                     "payment": {"card": TEST_CARD}, "shipping_address": DEFAULTS["shipping_address"]}
    assert DEFAULTS["items[].price"] == str(LIST_PRICE) and DEFAULTS["payment.card"] == TEST_CARD


def test_camel_case_and_snake_case_make_the_same_order() -> None:
    camel = {"orderId": "o-1", "customerId": "c-9", "email": "c@example.com",
             "items": [{"productId": "SKU-1", "quantity": 1, "price": "2.50"}], "payment": {"card": "4111111111111111"},
             "shippingAddress": {"name": "Ada", "street": "1 Main St", "city": "Paris", "country": "FR"}}
    snake = {"order_id": "o-1", "customer_id": "c-9", "email": "c@example.com",
             "items": [{"sku": "SKU-1", "quantity": 1, "price": "2.50"}], "payment": {"card": "4111111111111111"},
             "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Paris", "country": "FR"}}

    a, b = OrderBody.model_validate(camel), OrderBody.model_validate(snake)

    assert a == b and a.order_id == "o-1" and a.items[0].price == Decimal("2.50")
    assert OrderBody.model_validate({"items": [{"product_id": "SKU-1", "quantity": 1}]}).items[0].sku == "SKU-1"


@pytest.mark.parametrize("body, where", [
    ({"items": []}, "items"),
    ({}, "items"),
    ({"items": [{"productId": "123", "quantity": 0}]}, "quantity"),
    ({"items": [{"productId": "123", "quantity": 2}], "customerID": "typo"}, "customerID"),  # not a silent guest
    ({"items": [{"productId": "123", "quantity": 2}], "payment": {"card": "12"}}, "card"),
])
def test_a_bad_order_is_refused_naming_the_field(body: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        OrderBody.model_validate(body)
    assert where in str(caught.value)


# ------------------------------------------------------------------ numbering and the endpoint


def test_orders_without_an_id_are_numbered_from_order_123(saga_runtime: Runtime) -> None:
    assert FIRST_ORDER_NUMBER == 123
    assert [next_order_id() for _ in range(3)] == ["order-123", "order-124", "order-125"]


def test_the_seeds_order_is_accepted_as_order_123_and_compensates_when_the_payment_fails(
        client: TestClient, saga_kit: SagaKit) -> None:
    # the switch the payment service serves on its own port (tasks/payment_service.py), here on the API's
    assert client.post("/api/test/fail-next-request").status_code == 200

    r = client.post("/api/orders", json=SEED_ORDER)
    saga_kit.settle()

    assert r.status_code == 202, r.text
    assert r.json()["order_id"] == r.json()["saga_id"] == "order-123"
    status = client.get("/api/sagas/order-123/status").json()
    assert status["state"] == "COMPENSATED"
    steps = {s["name"]: s for s in status["steps"]}
    assert steps["reserve_inventory"]["status"] == "COMPENSATED"
    assert "injected by POST /api/test/fail-next-request" in steps["process_payment"]["error"]
    assert available("123") == schema.STARTING_STOCK["123"]  # the reservation released
    assert effects_of("order-123")["reservation"] == ["RELEASED"]


def test_the_next_order_is_order_124_and_a_repeat_with_the_same_key_is_the_same_order(
        client: TestClient, saga_kit: SagaKit) -> None:
    first = client.post("/api/orders", json=SEED_ORDER)
    second = client.post("/api/orders", json=SEED_ORDER, headers={"Idempotency-Key": "checkout-7"})
    again = client.post("/api/orders", json=SEED_ORDER, headers={"Idempotency-Key": "checkout-7"})
    saga_kit.settle()

    assert [r.status_code for r in (first, second, again)] == [202, 202, 202]
    assert [r.json()["order_id"] for r in (first, second, again)] == ["order-123", "order-124", "order-124"]
    assert saga_kit.state("order-124") == "COMPLETED"
    assert available("123") == schema.STARTING_STOCK["123"] - 4  # two orders of two, not three


def test_an_explicit_order_id_is_kept_and_a_taken_shop_number_is_skipped(client: TestClient,
                                                                          saga_kit: SagaKit) -> None:
    taken = client.post("/api/orders", json={"orderId": "order-123", **SEED_ORDER})
    numbered = client.post("/api/orders", json=SEED_ORDER)
    saga_kit.settle()

    assert taken.json()["order_id"] == "order-123"
    assert numbered.status_code == 202 and numbered.json()["order_id"] == "order-124"
    assert client.post("/api/orders", json={"items": [{"productId": "123"}]}).status_code == 422
