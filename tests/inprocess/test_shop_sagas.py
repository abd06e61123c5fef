"""The example shop's sagas (tasks/sagas.py) through the test kit: the shop's real step functions,
in process, on a SQLite file with the shop's tables, on the test's clock; no server.

For each saga (line, parallel, child, approval): a permanent failure, retries (recovered and
exhausted), a time-out, and for the approval a rejection and a deadline; each asserts the outcome,
the order of compensations and what each compensation received. This is how a team tests its own
sagas (docs/guide/testing.md).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import tasks.sagas  # noqa: F401  (registers the shop's sagas)
from tasks import schema
from tasks.common import effects_of
from tasks.inventory import available, restock
from workflows.core.definition import child_id
from workflows.testing import InjectedFault, SagaKit

_orders = itertools.count(1)
DECLINED = {"card": "4000000000000002"}
"""A card the example payment service declines (`CardDeclined`, a permanent error)."""


@pytest.fixture
def saga_migrate() -> Callable[[str], None]:
    return schema.migrate  # the saga tables and the shop's own


def order(price: str = "12.50", **overrides: Any) -> dict[str, Any]:
    """An order of two units of a SKU of its own, stocked with 10."""
    n = next(_orders)
    restock({f"SKU-{n}": 10})
    data = {"order_id": f"order-{n}", "customer_id": "cust-1", "email": "c@example.com",
            "items": [{"sku": f"SKU-{n}", "quantity": 2, "price": price}], "payment": {"card": "4242424242424242"},
            "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}
    return data | overrides


def sku(data: dict[str, Any]) -> str:
    return str(data["items"][0]["sku"])


# ------------------------------------------------------------------ the line: order_fulfillment


def test_line_completes_with_every_effect(saga_kit: SagaKit) -> None:
    data = order()
    saga_id = saga_kit.start("order_fulfillment", data)

    assert saga_kit.state(saga_id) == "COMPLETED"
    assert [c.step for c in saga_kit.actions(saga_id)] == [
        "reserve_inventory", "process_payment", "create_shipment", "send_confirmation"]
    assert saga_kit.compensations(saga_id) == [] and available(sku(data)) == 8
    assert effects_of(saga_id) == {"reservation": ["RESERVED"], "payment": ["CHARGED"], "shipment": ["CREATED"],
                                   "notification": ["order_confirmation"]}


def test_line_a_permanent_failure_compensates_newest_first_each_with_its_actions_result(saga_kit: SagaKit) -> None:
    # Given the carrier refusing the shipment for good
    saga_kit.fail("shipping.create", permanent=True)
    data = order()

    saga_id = saga_kit.start("order_fulfillment", data)

    # Then the charge is refunded, then the stock released: newest first, each given its action's result
    assert saga_kit.state(saga_id) == "COMPENSATED"
    refund, release = saga_kit.compensations(saga_id)
    view = saga_kit.view(saga_id)
    assert (refund.step, refund.received) == ("process_payment", view.step("process_payment").result)
    assert (release.step, release.received) == ("reserve_inventory", view.step("reserve_inventory").result)
    assert refund.returned == {"outcome": "refunded"} and release.returned == {"outcome": "released"}
    assert [c.step for c in saga_kit.actions(saga_id)] == ["reserve_inventory", "process_payment", "create_shipment"]
    assert available(sku(data)) == 10
    assert effects_of(saga_id)["payment"] == ["REFUNDED"]
    assert "StepFailed" in saga_kit.history(saga_id, "create_shipment")


def test_line_a_declined_card_is_never_retried_and_releases_the_stock(saga_kit: SagaKit) -> None:
    saga_id = saga_kit.start("order_fulfillment", order(payment=DECLINED))

    assert saga_kit.state(saga_id) == "COMPENSATED"
    assert [(c.step, c.attempt) for c in saga_kit.actions(saga_id)][-1] == ("process_payment", 1)
    assert saga_kit.compensated(saga_id) == ["reserve_inventory"]
    assert saga_kit.worker.waiting == []  # nothing left to retry


def test_line_a_transient_failure_is_retried_after_its_backoff_on_the_clock(saga_kit: SagaKit) -> None:
    # Given the gateway failing twice (policy: 0.5 s, then 1 s, with jitter up to the interval)
    saga_kit.fail("payment.charge", times=2)
    saga_id = saga_kit.start("order_fulfillment", order())

    # Then the first retry waits for its backoff: nothing runs until the clock passes it
    assert saga_kit.state(saga_id) == "RUNNING"
    assert [(c.step, c.attempt, c.ok) for c in saga_kit.actions(saga_id)][-1] == ("process_payment", 1, False)
    saga_kit.advance(1)
    saga_kit.advance(2)

    assert saga_kit.state(saga_id) == "COMPLETED"
    assert [(c.attempt, c.ok) for c in saga_kit.actions(saga_id) if c.step == "process_payment"] == [
        (1, False), (2, False), (3, True)]
    assert saga_kit.view(saga_id).step("process_payment").attempts == 3
    assert saga_kit.compensations(saga_id) == []


def test_line_retries_exhausted_compensate_what_completed(saga_kit: SagaKit) -> None:
    saga_kit.fail("payment.charge")  # every call: the policy's 5 attempts run out
    saga_id = saga_kit.start("order_fulfillment", order())

    saga_kit.settle()

    assert saga_kit.state(saga_id) == "COMPENSATED"
    attempts = [c for c in saga_kit.actions(saga_id) if c.step == "process_payment"]
    assert [c.attempt for c in attempts] == [1, 2, 3, 4, 5] and not any(c.ok for c in attempts)
    assert attempts[-1].raised is not None and attempts[-1].raised.startswith(InjectedFault.__name__)
    assert saga_kit.compensated(saga_id) == ["reserve_inventory"]


def test_line_a_timed_out_step_is_compensated_as_one_that_may_have_happened(saga_kit: SagaKit) -> None:
    # Given the shipment step exceeding its time limit after it booked the parcel
    saga_kit.time_out("shipping.create", after=True)
    saga_id = saga_kit.start("order_fulfillment", order())

    # Then it is TIMED_OUT and compensated first (given no result), then the charge, then the stock
    assert saga_kit.state(saga_id) == "COMPENSATED"
    assert saga_kit.view(saga_id).step("create_shipment").error is not None
    assert saga_kit.compensated(saga_id) == ["create_shipment", "process_payment", "reserve_inventory"]
    cancel_ship = saga_kit.compensations(saga_id)[0]
    assert cancel_ship.received is None and cancel_ship.returned == {"outcome": "cancelled"}
    assert effects_of(saga_id)["shipment"] == ["CANCELLED"]
    assert "StepTimedOut" in saga_kit.history(saga_id, "create_shipment")


def test_line_a_failing_compensation_is_retried_until_it_succeeds(saga_kit: SagaKit) -> None:
    saga_kit.fail("create_shipment", permanent=True)
    saga_kit.fail("inventory.release", times=1, side="compensation")
    saga_id = saga_kit.start("order_fulfillment", order())

    saga_kit.settle()

    assert saga_kit.state(saga_id) == "COMPENSATED"
    assert [(c.step, c.attempt, c.ok) for c in saga_kit.compensations(saga_id)] == [
        ("process_payment", 1, True), ("reserve_inventory", 1, False), ("reserve_inventory", 2, True)]


# ------------------------------------------------------------------ parallel: order_fulfillment_parallel


def test_parallel_a_declined_card_releases_the_stock_reserved_beside_it(saga_kit: SagaKit) -> None:
    data = order(payment=DECLINED)
    saga_id = saga_kit.start("order_fulfillment_parallel", data)

    assert saga_kit.state(saga_id) == "COMPENSATED"
    assert {c.step for c in saga_kit.actions(saga_id)} == {"reserve_inventory", "process_payment"}
    [release] = saga_kit.compensations(saga_id)
    assert release.step == "reserve_inventory" and release.received is not None
    assert release.received["status"] == "RESERVED" and available(sku(data)) == 10


def test_parallel_retries_of_one_branch_then_the_line_goes_on(saga_kit: SagaKit) -> None:
    saga_kit.fail("process_payment", times=3)
    saga_id = saga_kit.start("order_fulfillment_parallel", order())
    assert saga_kit.state(saga_id) == "RUNNING"

    saga_kit.settle()

    assert saga_kit.state(saga_id) == "COMPLETED"
    assert [c.attempt for c in saga_kit.actions(saga_id) if c.step == "process_payment"] == [1, 2, 3, 4]
    assert [c.step for c in saga_kit.actions(saga_id)][-2:] == ["create_shipment", "send_confirmation"]


def test_parallel_a_time_out_after_the_group_compensates_both_branches(saga_kit: SagaKit) -> None:
    saga_kit.time_out("shipping.create")  # before it booked anything
    saga_id = saga_kit.start("order_fulfillment_parallel", order())

    assert saga_kit.state(saga_id) == "COMPENSATED"
    first, *group = saga_kit.compensated(saga_id)
    assert first == "create_shipment" and sorted(group) == ["process_payment", "reserve_inventory"]
    assert effects_of(saga_id)["shipment"] == ["VOIDED"]  # nothing to cancel: a late booking finds the tombstone


# ------------------------------------------------------------------ child: order_with_shipping


def test_child_a_permanent_failure_in_the_child_compensates_the_parent(saga_kit: SagaKit) -> None:
    data = order()
    saga_kit.fail("shipping.create", permanent=True)
    saga_id = saga_kit.start("order_with_shipping", data)

    kid = child_id(saga_id, "shipping")
    assert (saga_kit.state(saga_id), saga_kit.state(kid)) == ("COMPENSATED", "COMPENSATED")
    assert [(c.saga_id, c.step) for c in saga_kit.compensations()] == [(saga_id, "reserve_inventory")]
    assert available(sku(data)) == 10


def test_child_a_failure_after_the_child_completed_compensates_the_child_run(saga_kit: SagaKit) -> None:
    saga_kit.fail("payment.charge", permanent=True)
    saga_id = saga_kit.start("order_with_shipping", order())

    kid = child_id(saga_id, "shipping")
    assert (saga_kit.state(saga_id), saga_kit.state(kid)) == ("COMPENSATED", "COMPENSATED")
    # the child's shipment is cancelled (in the child's run), then the parent's stock released
    assert [(c.saga_id, c.step) for c in saga_kit.compensations() if c.ok] == [
        (kid, "create_shipment"), (saga_id, "reserve_inventory")]
    cancel_ship = saga_kit.compensations(kid)[0]
    assert cancel_ship.received == saga_kit.view(kid).step("create_shipment").result
    assert effects_of(kid)["shipment"] == ["CANCELLED"]


def test_child_retries_in_the_child_run(saga_kit: SagaKit) -> None:
    saga_kit.fail("shipping.create", times=2)
    saga_id = saga_kit.start("order_with_shipping", order())

    saga_kit.settle()

    kid = child_id(saga_id, "shipping")
    assert (saga_kit.state(saga_id), saga_kit.state(kid)) == ("COMPLETED", "COMPLETED")
    assert [c.attempt for c in saga_kit.actions(kid)] == [1, 2, 3]


def test_child_a_time_out_in_the_child_compensates_both_runs(saga_kit: SagaKit) -> None:
    saga_kit.time_out("shipping.create", after=True)
    saga_id = saga_kit.start("order_with_shipping", order())

    kid = child_id(saga_id, "shipping")
    assert (saga_kit.state(saga_id), saga_kit.state(kid)) == ("COMPENSATED", "COMPENSATED")
    assert [(c.saga_id, c.step, c.received) for c in saga_kit.compensations() if c.ok] == [
        (kid, "create_shipment", None), (saga_id, "reserve_inventory", saga_kit.view(saga_id).step(
            "reserve_inventory").result)]


# ------------------------------------------------------------------ approval: order_approval

BIG = "60.00"
"""Two units at 60.00: above the 100.00 limit, the order waits for a manager."""


def test_approval_a_small_order_does_not_wait(saga_kit: SagaKit) -> None:
    saga_id = saga_kit.start("order_approval", order())
    assert saga_kit.state(saga_id) == "COMPLETED"


def test_approval_approved_goes_on_to_completion(saga_kit: SagaKit) -> None:
    saga_id = saga_kit.start("order_approval", order(BIG))
    assert saga_kit.state(saga_id) == "WAITING"

    saga_kit.signal(saga_id, "approval", {"approved": True, "reason": "regular customer"}, who="manager")

    assert saga_kit.state(saga_id) == "COMPLETED"
    assert saga_kit.view(saga_id).step("manager_approval").result == {"approved": True, "reason": "regular customer"}


def test_approval_a_rejection_releases_the_stock(saga_kit: SagaKit) -> None:
    data = order(BIG)
    saga_id = saga_kit.start("order_approval", data)

    saga_kit.signal(saga_id, "approval", {"approved": False, "reason": "too big"}, who="manager")

    assert saga_kit.state(saga_id) == "COMPENSATED"
    assert "WaitRejected" in saga_kit.history(saga_id, "manager_approval")
    assert saga_kit.compensated(saga_id) == ["reserve_inventory"] and available(sku(data)) == 10
    assert not any(c.step == "process_payment" for c in saga_kit.calls(saga_id))


def test_approval_no_answer_by_the_deadline_releases_the_stock(saga_kit: SagaKit) -> None:
    saga_id = saga_kit.start("order_approval", order(BIG))

    saga_kit.advance(timedelta(days=2) - timedelta(seconds=1))
    assert saga_kit.state(saga_id) == "WAITING"
    saga_kit.advance(timedelta(seconds=2))

    assert saga_kit.state(saga_id) == "COMPENSATED"
    assert "WaitTimedOut" in saga_kit.history(saga_id, "manager_approval")
    assert saga_kit.compensated(saga_id) == ["reserve_inventory"]


def test_approval_approved_then_the_card_fails_for_good_after_retries(saga_kit: SagaKit) -> None:
    saga_kit.fail("payment.charge", times=2)
    saga_kit.fail("payment.charge", permanent=True)
    saga_id = saga_kit.start("order_approval", order(BIG))
    saga_kit.signal(saga_id, "approval", {"approved": True})

    saga_kit.settle()

    assert saga_kit.state(saga_id) == "COMPENSATED"
    assert [c.attempt for c in saga_kit.actions(saga_id) if c.step == "process_payment"] == [1, 2, 3]
    assert saga_kit.compensated(saga_id) == ["reserve_inventory"]


def test_approval_a_time_out_of_the_charge_after_approval_refunds_and_releases(saga_kit: SagaKit) -> None:
    saga_kit.time_out("payment.charge", after=True)
    saga_id = saga_kit.start("order_approval", order(BIG))
    saga_kit.signal(saga_id, "approval", {"approved": True})

    assert saga_kit.state(saga_id) == "COMPENSATED"
    assert saga_kit.compensated(saga_id) == ["process_payment", "reserve_inventory"]
    assert effects_of(saga_id)["payment"] == ["REFUNDED"]


# ------------------------------------------------------------------ the kit itself


def test_the_kit_refuses_a_fault_on_a_name_no_step_has(saga_kit: SagaKit) -> None:
    from workflows.core.errors import DefinitionError

    with pytest.raises(DefinitionError, match="payment.charg"):
        saga_kit.fail("payment.charg")
