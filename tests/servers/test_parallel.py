"""Parallel groups and fan-outs with a real worker (Redis, PostgreSQL, prefork pool of 2).

Test sagas `tests.parallel` (a, then reserve and charge at once, then ship) and `tests.fan_out`
(pick, one `parcel-<i>` branch per input parcel, notify) are in tests/support/sagas.py.
"""
from __future__ import annotations

import pytest

from workflows import get_saga, start_saga, wait_for

pytestmark = pytest.mark.usefixtures("running_worker")


def effects(redis_client, saga_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.decode() for e in redis_client.lrange(f"effects:{saga_id}", 0, -1)]


def test_a_parallel_group_runs_its_branches_together_and_the_next_step_sees_both(redis_client):  # type: ignore[no-untyped-def]
    view = wait_for(start_saga("tests.parallel", {"behaviour": {"reserve": {"sleep": 0.5},
                                                                "charge": {"sleep": 0.5}}}), timeout=30)

    assert view.state == "COMPLETED"
    # both branches were dispatched by one transition, and ran at the same time on the pool of 2
    dispatched = [e for e in view.events if e.type == "StepDispatched" and e.step in ("reserve", "charge")]
    assert len(dispatched) == 2 and dispatched[0].at == dispatched[1].at
    reserve, charge = view.step("reserve"), view.step("charge")
    assert reserve.started_at and charge.started_at and reserve.finished_at and charge.finished_at
    assert max(reserve.started_at, charge.started_at) < min(reserve.finished_at, charge.finished_at)
    assert view.step("ship").result["saw"] == ["a", "charge", "reserve"]


def test_a_branch_failing_while_its_sibling_is_in_flight_compensates_the_sibling_once_it_succeeded(redis_client):  # type: ignore[no-untyped-def]
    # Given reserve failing for good at once, while charge takes 1.5 s
    saga_id = start_saga("tests.parallel", {"behaviour": {"reserve": {"fail": "permanent"},
                                                          "charge": {"sleep": 1.5}}})
    view = wait_for(saga_id, timeout=30)

    # Then the charge was awaited, recorded as it succeeded, and then refunded; a was undone after
    # it; reserve (failed: no effect) and ship (never started) were not compensated
    assert view.state == "COMPENSATED"
    types = [(e.type, e.step) for e in view.events]
    assert types.index(("CompensationStarted", None)) < types.index(("StepSucceeded", "charge"))
    assert view.step("charge").status == "COMPENSATED" and view.step("charge").result["step"] == "charge"
    assert view.step("reserve").status == "FAILED" and view.step("ship").status == "PENDING"
    assert [e.step for e in view.events if e.type == "StepCompensated"] == ["charge", "a"]
    assert sorted(effects(redis_client, saga_id)) == sorted(
        ["action:a:1", "action:reserve:1", "action:charge:1", "compensation:charge:1", "compensation:a:1"])


def test_a_fan_out_of_20_with_3_failures_compensates_exactly_the_17_that_succeeded(redis_client):  # type: ignore[no-untyped-def]
    # Given 20 parcels, of which 3, 7 and 15 fail for good
    failing = {3, 7, 15}
    data = {"parcels": [{"id": f"p{i}"} for i in range(20)],
            "behaviour": {f"parcel-{i}": {"fail": "permanent"} for i in failing}}
    saga_id = start_saga("tests.fan_out", data)
    view = wait_for(saga_id, timeout=60)

    # Then every branch ran once with its own item and idempotency key; the 17 that succeeded and
    # pick were compensated once each, the 3 failed ones and notify never
    assert view.state == "COMPENSATED"
    done = effects(redis_client, saga_id)
    assert sorted(e for e in done if e.startswith("action:parcel-")) == sorted(
        f"action:parcel-{i}:1" for i in range(20))
    undone = sorted(e for e in done if e.startswith("compensation:"))
    assert undone == sorted([f"compensation:parcel-{i}:1" for i in range(20) if i not in failing]
                            + ["compensation:pick:1"])
    assert "action:notify:1" not in done
    succeeded = get_saga(saga_id).events
    results = {e.step: e.detail["result"] for e in succeeded if e.type == "StepSucceeded" and e.step != "pick"}
    assert results["parcel-4"]["item"] == {"id": "p4"} and results["parcel-4"]["key"] == f"{saga_id}-parcel-4"
    # pick waited for every branch's compensation: it is the last one undone
    assert [e.step for e in view.events if e.type == "StepCompensated"][-1] == "pick"


def test_a_fan_out_over_its_bound_is_refused_and_nothing_is_written():  # type: ignore[no-untyped-def]
    from tests.support.interfaces import saga_count
    from workflows import InvalidInput

    before = saga_count()
    with pytest.raises(InvalidInput, match="21 items, at most 20"):
        start_saga("tests.fan_out", {"parcels": list(range(21))})
    assert saga_count() == before
