"""Both seed choreographies end to end, on Redis and on RabbitMQ, one worker pool per service.

Given an order, when the services react to each other's events, then the saga ends with the
right events, the right effects in the services' tables and the right derived state; and when a
service refuses, the services that already acted undo exactly what they did.
"""
from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.support.choreo import (DECLINED, UNSERVED, effects, handled, order, outbox, published, settle,
                            sold_out)
from tasks.choreography import parallel, sequential
from tasks.common import arm_fault, transaction
from tasks.inventory import available



def once_each(saga_id: str) -> None:
    """Every published event was delivered to each of its consumers exactly once, and sent."""
    deliveries = handled(saga_id)
    assert len(deliveries) == len(set(deliveries)), deliveries
    assert all(sent for _, _, sent in outbox(saga_id)), outbox(saga_id)


# ------------------------------------------------------------------ sequential (seed 000)


def test_sequential_happy_path_fulfils_the_order(cluster):  # type: ignore[no-untyped-def]
    o = order()
    sku = o["items"][0]["sku"]

    view = settle(sequential.start("OrderCreated", o))

    assert view.state == "COMPLETED" and view.style == "choreographed" and view.saga_type == "order_sequential"
    assert published(view.id) == ["OrderCreated", "ReserveInventory", "InventoryReserved", "ProcessPayment",
                                  "PaymentProcessed", "CreateShipment", "ShipmentCreated", "OrderFulfilled"]
    assert handled(view.id) == [("OrderCreated", "orders"), ("ReserveInventory", "inventory"),
                                ("InventoryReserved", "orders"), ("ProcessPayment", "payment"),
                                ("PaymentProcessed", "orders"), ("CreateShipment", "shipping"),
                                ("ShipmentCreated", "orders")]
    assert effects(view.id) == {"reservation": ["RESERVED"], "payment": ["CHARGED"], "shipment": ["CREATED"],
                                "notification": []}
    assert available(sku) == 8
    assert view.event_types()[0] == "SagaCreated" and view.event_types()[-1] == "SagaCompleted"
    once_each(view.id)
    with transaction() as s:
        row = s.execute(text("SELECT state, style FROM sagas WHERE id = :i"), {"i": view.id}).one()
    assert tuple(row) == ("COMPLETED", "choreographed")


@pytest.mark.parametrize("failing, overrides, events, left", [
    ("inventory", "sold_out",
     ["InventoryReservationFailed", "OrderFailed"],
     {"reservation": [], "payment": [], "shipment": []}),
    ("payment", DECLINED,
     ["PaymentFailed", "ReleaseInventory", "OrderFailed", "InventoryReleased"],
     {"reservation": ["RELEASED"], "payment": [], "shipment": []}),
    ("shipping", UNSERVED,
     ["ShipmentFailed", "RefundPayment", "ReleaseInventory", "OrderFailed", "PaymentRefunded", "InventoryReleased"],
     {"reservation": ["RELEASED"], "payment": ["REFUNDED"], "shipment": []}),
])
def test_sequential_failure_undoes_what_was_done(cluster, failing, overrides, events, left):  # type: ignore[no-untyped-def]
    o = order(**(sold_out() if overrides == "sold_out" else overrides))
    sku = o["items"][0]["sku"]
    before = available(sku)

    view = settle(sequential.start("OrderCreated", o))

    assert view.state == "COMPENSATED"
    tail = published(view.id)[published(view.id).index(events[0]):]
    assert sorted(tail) == sorted(events) and tail[0] == events[0]
    assert "OrderFulfilled" not in published(view.id)
    got = effects(view.id)
    assert {k: got[k] for k in left} == left
    assert available(sku) == before
    assert view.failure_reason and view.failure_reason.startswith(events[0])
    assert view.event_types().count("CompensationStarted") == 1 and view.event_types()[-1] == "SagaCompensated"
    once_each(view.id)


def test_transient_failure_is_retried_with_backoff_then_completes(cluster):  # type: ignore[no-untyped-def]
    arm_fault("shipping", times=2, permanent=False, message="carrier API timeout")

    view = settle(sequential.start("OrderCreated", order()))

    assert view.state == "COMPLETED"
    failed = [e for e in view.events if e.type == "EventAttemptFailed"]
    assert [(e.step, e.attempt) for e in failed] == [("CreateShipment", 1), ("CreateShipment", 2)]
    assert all("carrier API timeout" in e.detail["error"] and e.detail["retry_in"] is not None for e in failed)
    assert [e.attempt for e in view.events if e.type == "EventHandled" and e.step == "CreateShipment"] == [3]
    assert effects(view.id)["shipment"] == ["CREATED"]


# ------------------------------------------------------------------ parallel fan-out (seed 001)


def test_parallel_happy_path_payment_and_inventory_at_once(cluster):  # type: ignore[no-untyped-def]
    view = settle(parallel.start("OrderCreated", order()))

    assert view.state == "COMPLETED"
    first = next(e for e in view.events if e.type == "EventPublished")
    assert first.step == "OrderCreated" and first.detail["consumers"] == ["inventory", "payment"]
    assert sorted(published(view.id)) == sorted(["OrderCreated", "InventoryReserved", "PaymentProcessed",
                                                 "OrderCompleted", "ConfirmationSent"])
    assert ("OrderCompleted", "notification") in handled(view.id)  # the async handler
    assert effects(view.id) == {"reservation": ["RESERVED"], "payment": ["CHARGED"], "shipment": [],
                                "notification": ["order_confirmation"]}
    once_each(view.id)


@pytest.mark.parametrize("case", ["inventory_fails", "payment_fails", "both_fail"])
def test_parallel_failure_is_undone_by_the_other_service(cluster, case):  # type: ignore[no-untyped-def]
    overrides = {"inventory_fails": sold_out(), "payment_fails": DECLINED,
                 "both_fail": {**sold_out(), **DECLINED}}[case]
    o = order(**overrides)
    sku = o["items"][0]["sku"]
    before = available(sku)

    view = settle(parallel.start("OrderCreated", o))

    assert view.state == "COMPENSATED"
    events = published(view.id)
    assert events.count("OrderCancelled") == 1 and "OrderCompleted" not in events
    e = effects(view.id)
    assert "CHARGED" not in e["payment"] and "RESERVED" not in e["reservation"]
    assert available(sku) == before
    if case != "payment_fails":
        assert "PaymentRefunded" in events
        assert e["payment"] in (["REFUNDED"], ["VOIDED"])
    if case != "inventory_fails":
        assert "InventoryReleased" in events
    once_each(view.id)


def test_failure_handled_before_the_charge_means_never_charged(cluster):  # type: ignore[no-untyped-def]
    """Out of order: the charge fails transiently and waits 1 s; meanwhile inventory fails and the
    payment service handles InventoryReservationFailed first. The late charge charges nothing."""
    arm_fault("payment", times=1, permanent=False, operation="action", message="gateway timeout")

    view = settle(parallel.start("OrderCreated", order(**sold_out())), timeout=40)

    assert view.state == "COMPENSATED"
    by_payment = [t for t, c in handled(view.id) if c == "payment"]
    assert by_payment == ["InventoryReservationFailed", "OrderCreated"]
    assert effects(view.id)["payment"] == ["VOIDED"]
    assert "PaymentProcessed" not in published(view.id)
    assert published(view.id).count("OrderCancelled") == 1
    charge = [e for e in view.events if e.type == "EventHandled" and e.step == "OrderCreated"
              and e.detail["consumer"] == "payment"][0]
    assert charge.attempt == 2 and charge.detail["result"]["charged"] is False
