"""The order saga end to end: a real worker, Redis, PostgreSQL.

Given an order, when a step fails for good, then exactly the steps that completed before it
are compensated, newest first, and the service tables show each effect undone once.
"""
from __future__ import annotations

import pytest

from tasks.common import arm_fault, effects_of, transaction
from tasks.inventory import available
from workflows import get_saga, start_saga, wait_for

pytestmark = pytest.mark.usefixtures("running_worker")

STEPS = ["reserve_inventory", "process_payment", "create_shipment", "send_confirmation"]
SERVICE_OF = {"reserve_inventory": "inventory", "process_payment": "payment",
              "create_shipment": "shipping", "send_confirmation": "notification"}


effects = effects_of


def compensated_order(view) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.step for e in view.events if e.type == "StepCompensated"]


def test_happy_path_completes_every_step_once(order_factory):  # type: ignore[no-untyped-def]
    order = order_factory()
    sku = order["items"][0]["sku"]

    view = wait_for(start_saga("order_fulfillment", order), timeout=30)

    assert view.state == "COMPLETED"
    assert [s.status for s in view.steps] == ["SUCCEEDED"] * 4
    assert all(s.attempts == 1 for s in view.steps)
    charged = view.step("process_payment").result
    assert (charged["amount"], charged["status"]) == ("25.00", "CHARGED") and charged["payment_id"] > 0
    assert effects(view.id) == {"reservation": ["RESERVED"], "payment": ["CHARGED"], "shipment": ["CREATED"],
                                "notification": ["order_confirmation"]}
    assert available(sku) == 8
    assert view.event_types()[0] == "SagaCreated" and view.event_types()[-1] == "SagaCompleted"
    # each action saw the results of the steps before it
    tracking = view.step("create_shipment").result["tracking_number"]
    assert view.step("send_confirmation").result["tracking_number"] == tracking


@pytest.mark.parametrize("failing", STEPS)
def test_failure_at_each_step_compensates_exactly_the_completed_steps_newest_first(order_factory, failing):  # type: ignore[no-untyped-def]
    order = order_factory()
    sku = order["items"][0]["sku"]
    arm_fault(SERVICE_OF[failing], times=1, permanent=True, message=f"{failing} is broken")

    view = wait_for(start_saga("order_fulfillment", order), timeout=30)

    k = STEPS.index(failing)
    done_before = STEPS[:k]
    with_compensation = [s for s in done_before if s != "send_confirmation"]
    assert view.state == "COMPENSATED"
    assert view.step(failing).status == "FAILED"
    assert view.step(failing).attempts == 1  # permanent: not retried
    assert [view.step(s).status for s in done_before] == ["COMPENSATED"] * len(done_before)
    assert [view.step(s).status for s in STEPS[k + 1:]] == ["PENDING"] * (3 - k)
    assert compensated_order(view) == list(reversed(with_compensation))
    e = effects(view.id)
    assert e["reservation"] == (["RELEASED"] if k > 0 else [])
    assert e["payment"] == (["REFUNDED"] if k > 1 else [])
    assert e["shipment"] == (["CANCELLED"] if k > 2 else [])
    assert available(sku) == 10
    assert f"{failing} is broken" in (view.failure_reason or "")


def test_declined_card_is_compensated_without_retry(order_factory):  # type: ignore[no-untyped-def]
    order = order_factory(payment={"card": "4000000000000002"})

    view = wait_for(start_saga("order_fulfillment", order), timeout=30)

    assert view.state == "COMPENSATED"
    assert view.step("process_payment").attempts == 1
    assert "CardDeclined" in view.step("process_payment").error
    assert compensated_order(view) == ["reserve_inventory"]


def test_step_without_compensation_is_skipped_and_said_so():  # type: ignore[no-untyped-def]
    data = {"behaviour": {"c": {"fail": "permanent"}}}

    view = wait_for(start_saga("tests.three", data), timeout=30)

    assert view.state == "COMPENSATED"
    assert [s.status for s in view.steps] == ["COMPENSATED", "SUCCEEDED", "FAILED"]
    skipped = [e for e in view.events if e.type == "CompensationSkipped"]
    assert skipped and skipped[0].detail["steps"] == ["b"]
    assert compensated_order(view) == ["a"]


def test_state_and_history_are_queryable_in_sql(order_factory):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    arm_fault("shipping", permanent=True)
    saga_id = start_saga("order_fulfillment", order_factory())
    wait_for(saga_id, timeout=30)

    with transaction() as s:
        state = s.execute(text("SELECT state FROM sagas WHERE id = :i"), {"i": saga_id}).scalar()
        steps = s.execute(text("SELECT name, status FROM saga_steps WHERE saga_id = :i ORDER BY index"),
                          {"i": saga_id}).all()
        history = s.execute(text("SELECT type, step FROM saga_events WHERE saga_id = :i ORDER BY id"),
                            {"i": saga_id}).all()
    assert state == "COMPENSATED"
    assert [tuple(r) for r in steps] == [("reserve_inventory", "COMPENSATED"), ("process_payment", "COMPENSATED"),
                                         ("create_shipment", "FAILED"), ("send_confirmation", "PENDING")]
    types = [r[0] for r in history]
    assert types.index("StepFailed") < types.index("CompensationStarted") < types.index("SagaCompensated")
    assert [r[1] for r in history if r[0] == "StepCompensated"] == ["process_payment", "reserve_inventory"]
    assert get_saga(saga_id).state == "COMPENSATED"
