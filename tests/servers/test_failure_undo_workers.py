"""The failed step's own undo with a real worker, Redis and PostgreSQL: the shop's charge raises
after taking the money, and its refund (declared with `compensate_failure=True`) gives it back.
A charge that fails before taking anything is voided: nothing to refund, and a late charge finds
the tombstone."""
from __future__ import annotations

import pytest

from tasks.common import arm_fault, effects_of
from workflows import start_saga, wait_for

pytestmark = pytest.mark.usefixtures("running_worker")


def test_a_charge_that_raises_after_taking_the_money_is_refunded(order_factory):  # type: ignore[no-untyped-def]
    # Given a gateway that errors once the money is taken
    arm_fault("payment", 1, permanent=True, message="gateway 502 after capture", operation="after_action")

    # When the saga runs
    view = wait_for(start_saga("tests.charge_refund", order_factory()), timeout=30)

    # Then the failed step was compensated: the charge refunded, once
    assert view.state == "COMPENSATED"
    step = view.step("process_payment")
    assert (step.status, step.attempts, step.compensation_attempts) == ("COMPENSATED", 1, 1)
    assert "gateway 502 after capture" in (step.error or "")
    assert effects_of(view.id)["payment"] == ["REFUNDED"]
    assert [e.type for e in view.events if e.step == "process_payment"] == [
        "StepDispatched", "StepFailed", "CompensationDispatched", "StepCompensated"]


def test_a_charge_that_failed_before_taking_anything_is_voided_not_refunded(order_factory):  # type: ignore[no-untyped-def]
    # Given a gateway that errors before charging
    arm_fault("payment", 1, permanent=True, message="gateway down", operation="action")

    view = wait_for(start_saga("tests.charge_refund", order_factory()), timeout=30)

    # Then the refund found nothing to refund: it left a tombstone, no refund
    assert view.state == "COMPENSATED" and view.step("process_payment").status == "COMPENSATED"
    assert effects_of(view.id)["payment"] == ["VOIDED"]
