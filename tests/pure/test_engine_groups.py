"""The pure engine on sagas that are not a line: parallel groups and fan-outs. No broker, no database."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from workflows import DefinitionError, InvalidInput, Saga, Step
from workflows.core.definition import ForEach, Parallel
from workflows.core.engine import commands_for, decide, is_current, new_run
from workflows.core.state import (ActionFailed, ActionSucceeded, ActionTimedOut, Cancel, CompensationFailed,
                                  CompensationSucceeded, ErrorInfo, Ignored, Resume, RunState, RunStatus, Started,
                                  StepStatus, Transition)

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
ERR = ErrorInfo("Boom", "it broke")
_n = iter(range(10**9))


def ids() -> str:
    return f"{next(_n):032x}"


ORDER = Saga("parallel_order", steps=[
    Step("validate", action="orders.validate", compensation=None),
    Parallel("prepare", [Step("reserve", action="inventory.reserve", compensation="inventory.release"),
                         Step("charge", action="payment.charge", compensation="payment.refund")]),
    Step("ship", action="shipping.create", compensation="shipping.cancel"),
])

FULFIL = Saga("fulfil", steps=[
    Step("pick", action="w.pick", compensation="w.unpick"),
    ForEach(Step("ship_parcel", action="s.ship", compensation="s.cancel"), items=lambda d: d["parcels"],
            max_items=20),
    Step("notify", action="n.send", compensation=None),
])


def start(saga: Saga, data: dict | None = None) -> Transition:  # type: ignore[type-arg]
    data = data if data is not None else {}
    return decide(saga, new_run(saga, "r1", data, "start"), Started(), NOW, ids)


def step(saga: Saga, run: RunState, outcome) -> Transition:  # type: ignore[no-untyped-def]
    return decide(saga, run, outcome, NOW, ids)


def statuses(run: RunState) -> dict[str, str]:
    return {s.name: s.status.value for s in run.steps}


def sent(t: Transition) -> list[tuple[str, str]]:
    return [(c.step, c.kind) for c in t.commands]


def test_a_group_is_dispatched_together_and_joined_when_every_branch_succeeded() -> None:
    t = start(ORDER)
    t = step(ORDER, t.after, ActionSucceeded("validate", {"ok": True}))
    # both branches in one transition: two messages
    assert sent(t) == [("reserve", "action"), ("charge", "action")]
    t = step(ORDER, t.after, ActionSucceeded("charge", {"payment_id": 7}))
    assert sent(t) == [] and t.after.status == RunStatus.RUNNING  # waiting for reserve
    t = step(ORDER, t.after, ActionSucceeded("reserve", {"reservation": 3}))
    assert sent(t) == [("ship", "action")]
    # the step after the group sees every branch's result
    [cmd] = t.commands
    assert {s.name for s in t.after.steps if s.index < cmd.results_before} == {"validate", "reserve", "charge"}
    t = step(ORDER, t.after, ActionSucceeded("ship", {}))
    assert t.after.status == RunStatus.COMPLETED


def test_a_branch_failing_while_its_sibling_is_in_flight_waits_then_undoes_the_sibling() -> None:
    # Given the group dispatched, then reserve fails for good while charge is still running
    t = start(ORDER)
    t = step(ORDER, t.after, ActionSucceeded("validate", {}))
    t = step(ORDER, t.after, ActionFailed("reserve", ERR, retryable=False))
    # Then compensation begins but nothing is dispatched: charge's outcome is not in yet
    assert t.after.status == RunStatus.COMPENSATING and sent(t) == []
    # When the charge succeeds late, it is recorded, then refunded
    t = step(ORDER, t.after, ActionSucceeded("charge", {"payment_id": 7}))
    assert t.after.step("charge").result == {"payment_id": 7} and sent(t) == [("charge", "compensation")]
    t = step(ORDER, t.after, CompensationSucceeded("charge"))
    # validate has nothing to undo, the failed reserve never happened, ship never started
    assert t.after.status == RunStatus.COMPENSATED
    assert statuses(t.after) == {"validate": "SUCCEEDED", "reserve": "FAILED", "charge": "COMPENSATED",
                                 "ship": "PENDING"}


def test_the_completed_branches_are_compensated_concurrently_then_the_earlier_steps() -> None:
    saga = Saga("s", steps=[Step("a", action="x.a", compensation="x.ua"),
                            Parallel("g", [Step("b", action="x.b", compensation="x.ub"),
                                           Step("c", action="x.c", compensation="x.uc")]),
                            Step("d", action="x.d", compensation="x.ud")])
    t = start(saga)
    for o in (ActionSucceeded("a", {}), ActionSucceeded("b", {}), ActionSucceeded("c", {})):
        t = step(saga, t.after, o)
    t = step(saga, t.after, ActionFailed("d", ERR, retryable=False))
    assert sent(t) == [("b", "compensation"), ("c", "compensation")]  # one transition, both
    t = step(saga, t.after, CompensationSucceeded("c"))
    assert sent(t) == []  # a waits for b's compensation too
    t = step(saga, t.after, CompensationSucceeded("b"))
    assert sent(t) == [("a", "compensation")]


def test_a_branch_that_times_out_after_the_failure_is_compensated_as_unknown() -> None:
    t = start(ORDER)
    t = step(ORDER, t.after, ActionSucceeded("validate", {}))
    t = step(ORDER, t.after, ActionFailed("charge", ERR, retryable=False))
    t = step(ORDER, t.after, ActionTimedOut("reserve", "no result before the deadline"))
    assert sent(t) == [("reserve", "compensation")]


def test_no_new_work_starts_once_a_branch_failed_a_retryable_sibling_is_not_retried() -> None:
    t = start(ORDER)
    t = step(ORDER, t.after, ActionSucceeded("validate", {}))
    t = step(ORDER, t.after, ActionFailed("reserve", ERR, retryable=False))
    t = step(ORDER, t.after, ActionFailed("charge", ERR, retryable=True, countdown=1))
    assert t.after.step("charge").status == StepStatus.FAILED and t.dead_letters == ()
    assert t.after.status == RunStatus.COMPENSATED and sent(t) == []


def test_branches_report_at_any_version_each_message_checked_against_its_own_dispatch() -> None:
    t = start(ORDER)
    t = step(ORDER, t.after, ActionSucceeded("validate", {}))
    reserve, charge = t.commands
    t = step(ORDER, t.after, ActionSucceeded("charge", {}))  # the version moved on ...
    # ... but reserve's message is still the one its step waits on; charge's is done
    assert is_current(t.after, "reserve", "action", reserve.task_id, 1)
    assert not is_current(t.after, "charge", "action", charge.task_id, 1)
    assert not is_current(t.after, "reserve", "action", "another-task", 1)
    assert not is_current(t.after, "reserve", "action", reserve.task_id, 2)


def test_a_stuck_compensation_in_a_group_fails_the_run_while_its_sibling_still_finishes() -> None:
    saga = Saga("s2", steps=[Parallel("g", [
        Step("b", action="x.b", compensation="x.ub"), Step("c", action="x.c", compensation="x.uc")]),
        Step("d", action="x.d", compensation=None)])
    t = start(saga)
    for o in (ActionSucceeded("b", {}), ActionSucceeded("c", {}), ActionFailed("d", ERR, retryable=False)):
        t = step(saga, t.after, o)
    t = step(saga, t.after, CompensationFailed("b", ERR, retryable=False))
    assert t.after.status == RunStatus.FAILED and len(t.dead_letters) == 1
    t = step(saga, t.after, CompensationSucceeded("c"))  # still recorded in the FAILED run
    assert t.after.status == RunStatus.FAILED and t.after.step("c").status == StepStatus.COMPENSATED
    t = step(saga, t.after, Resume(None, "fixed", "ops"))
    assert sent(t) == [("b", "compensation")] and t.after.status == RunStatus.COMPENSATING
    t = step(saga, t.after, CompensationSucceeded("b"))
    assert t.after.status == RunStatus.COMPENSATED


def test_cancel_times_out_every_branch_in_flight_and_compensates_them() -> None:
    t = start(ORDER)
    t = step(ORDER, t.after, ActionSucceeded("validate", {}))
    t = step(ORDER, t.after, Cancel("customer asked", "ops"))
    # both outcomes are unknown: both are compensated, at once
    assert [e.type for e in t.events if e.step in ("reserve", "charge")] == [
        "StepTimedOut", "StepTimedOut", "CompensationDispatched", "CompensationDispatched"]
    assert all(t.after.step(n).error == "cancelled: customer asked" for n in ("reserve", "charge"))
    assert sent(t) == [("reserve", "compensation"), ("charge", "compensation")]


def test_recovery_rebuilds_every_message_a_run_waits_on() -> None:
    t = start(ORDER)
    t = step(ORDER, t.after, ActionSucceeded("validate", {}))
    assert commands_for(ORDER, t.after) == t.commands


# ------------------------------------------------------------------ fan-out


def test_a_fan_out_has_one_branch_per_item_each_with_its_own_key() -> None:
    data = {"parcels": [{"id": "p1"}, {"id": "p2"}, {"id": "p3"}]}
    run = new_run(FULFIL, "r1", data, "start")
    assert [s.name for s in run.steps] == ["pick", "ship_parcel-0", "ship_parcel-1", "ship_parcel-2", "notify"]
    assert FULFIL.item("ship_parcel-1", data) == {"id": "p2"} and FULFIL.item("pick", data) is None
    assert FULFIL.step("ship_parcel-2").action_name == "s.ship"
    t = step(FULFIL, decide(FULFIL, run, Started(), NOW, ids).after, ActionSucceeded("pick", {}))
    assert sent(t) == [(f"ship_parcel-{i}", "action") for i in range(3)]


def test_a_fan_out_with_failures_compensates_exactly_the_branches_that_succeeded() -> None:
    data = {"parcels": list(range(5))}
    t = start(FULFIL, data)
    t = step(FULFIL, t.after, ActionSucceeded("pick", {}))
    for i, ok in enumerate([True, False, True, True, False]):
        t = step(FULFIL, t.after, ActionSucceeded(f"ship_parcel-{i}", {}) if ok else
                 ActionFailed(f"ship_parcel-{i}", ERR, retryable=False))
    assert sorted(sent(t)) == [("ship_parcel-0", "compensation"), ("ship_parcel-2", "compensation"),
                               ("ship_parcel-3", "compensation")]


def test_an_empty_fan_out_goes_straight_on() -> None:
    t = start(FULFIL, {"parcels": []})
    t = step(FULFIL, t.after, ActionSucceeded("pick", {}))
    assert sent(t) == [("notify", "action")]


def test_a_fan_out_over_its_bound_or_without_its_items_is_refused_at_the_door() -> None:
    with pytest.raises(InvalidInput, match="21 items, at most 20"):
        FULFIL.validate_input({"parcels": list(range(21))})
    with pytest.raises(InvalidInput, match="could not read its items"):
        FULFIL.validate_input({"boxes": []})
    with pytest.raises(InvalidInput, match="must be a list"):
        FULFIL.validate_input({"parcels": "p1,p2"})


def test_group_declarations_are_checked_when_made() -> None:
    with pytest.raises(DefinitionError, match="unique"):
        Saga("dup", steps=[Step("a", action="x.a", compensation=None),
                           Parallel("g", [Step("a", action="x.b", compensation=None)])])
    with pytest.raises(DefinitionError, match="clash"):
        Saga("clash", steps=[Step("ship-0", action="x.a", compensation=None),
                             ForEach(Step("ship", action="x.s", compensation=None), items=lambda d: [])])
    with pytest.raises(DefinitionError, match="max_items"):
        ForEach(Step("ship", action="x.s", compensation=None), items=lambda d: [], max_items=0)
    with pytest.raises(DefinitionError, match="no steps"):
        Parallel("g", [])


def test_a_late_report_for_a_branch_that_was_never_started_is_ignored() -> None:
    t = start(ORDER)
    with pytest.raises(Ignored):
        step(ORDER, t.after, ActionSucceeded("ship", {}))
