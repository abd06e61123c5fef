"""The example services on the real database: idempotent effects and tombstones.

A compensation can run before its action does (the action's message waited in a queue past its
deadline and the step was timed out): it leaves a VOIDED row under the action's key, and the late
action then finds it and takes no effect.
"""
from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from tasks.inventory import available, release_reservation, reserve_items
from tasks.payment import charge_payment, refund_payment
from tasks.shipping import cancel_shipment, create_shipment
from workflows import StepContext

pytestmark = pytest.mark.usefixtures("app")


def ctx(saga_id: str, step: str, kind: str = "action") -> StepContext:
    return StepContext(saga_id=saga_id, saga_type="order_fulfillment", step=step, kind=kind, attempt=1,
                       task_id="t", input={})


@pytest.mark.parametrize("action, compensation, step", [
    (reserve_items, release_reservation, "reserve_inventory"),
    (charge_payment, refund_payment, "process_payment"),
    (create_shipment, cancel_shipment, "create_shipment"),
])
def test_a_compensation_that_overtakes_its_action_voids_it(order_factory, action, compensation, step):  # type: ignore[no-untyped-def]
    order = order_factory()
    saga_id = f"svc-{uuid.uuid4().hex[:10]}"

    undone = compensation(ctx(saga_id, step, "compensation"), order)
    late = action(ctx(saga_id, step), order)
    if isinstance(late, BaseModel):  # a typed step (the charge returns its Charged model)
        late = late.model_dump(mode="json")

    assert undone == {"outcome": "voided"}
    assert late["status"] == "VOIDED"  # the late action found the tombstone: no effect
    assert available(order["items"][0]["sku"]) == 10
    assert compensation(ctx(saga_id, step, "compensation"), order) == {"outcome": "nothing"}


def test_effects_happen_once_and_are_undone_once(order_factory):  # type: ignore[no-untyped-def]
    order = order_factory()
    sku = order["items"][0]["sku"]
    saga_id = f"svc-{uuid.uuid4().hex[:10]}"

    first = reserve_items(ctx(saga_id, "reserve_inventory"), order)
    again = reserve_items(ctx(saga_id, "reserve_inventory"), order)
    assert first == again and first["status"] == "RESERVED" and available(sku) == 8

    assert release_reservation(ctx(saga_id, "reserve_inventory", "compensation"), order) == {"outcome": "released"}
    assert release_reservation(ctx(saga_id, "reserve_inventory", "compensation"), order) == {"outcome": "nothing"}
    assert available(sku) == 10


@pytest.mark.parametrize("action, step", [
    (reserve_items, "reserve_inventory"), (charge_payment, "process_payment"), (create_shipment, "create_shipment"),
])
def test_two_copies_of_one_step_at_once_take_effect_once_and_both_succeed(order_factory, action, step):  # type: ignore[no-untyped-def]
    import threading

    from tasks.inventory import restock

    # Given one message delivered twice, both copies running at the same moment, and exactly
    # enough stock for one reservation
    order = order_factory()
    sku, quantity = order["items"][0]["sku"], order["items"][0]["quantity"]
    restock({sku: quantity})
    saga_id = f"svc-{uuid.uuid4().hex[:10]}"
    barrier = threading.Barrier(2)
    results: list[object] = [None, None]

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = action(ctx(saga_id, step), order)
        except Exception as e:  # noqa: BLE001 (the assertion below names it)
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then neither copy fails (a failure would be recorded as the step's outcome and leave the
    # effect uncompensated), both return the one effect, and the stock was taken once
    assert not any(isinstance(r, Exception) for r in results), results
    assert results[0] == results[1]
    assert available(sku) == (0 if step == "reserve_inventory" else quantity)
