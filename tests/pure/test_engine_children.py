"""The pure engine on child sagas: a step whose action is another saga. No broker, no database.

The parent's transition carries the child's creation (its `Started` transition) and the orders
for other runs (cancel, compensate the child; report to the parent); these tests apply each
order by hand, as the runtime's loop does after the commit.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from workflows import DefinitionError, Saga, Step
from workflows.core.definition import Child, Parallel, child_id
from workflows.core.engine import commands_for, decide, new_run
from workflows.core.state import (ActionFailed, ActionSucceeded, Cancel, ChildFinished, Compensate,
                                  CompensationFailed, CompensationSucceeded, ErrorInfo, Ignored, Order, Resume,
                                  RunState, RunStatus, Started, StepStatus, Transition)

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
ERR = ErrorInfo("Boom", "it broke")
_n = iter(range(10**9))


def ids() -> str:
    return f"{next(_n):032x}"


SHIPPING = Saga("shipping", steps=[
    Step("label", action="ship.label", compensation="ship.void_label"),
    Step("pickup", action="ship.pickup", compensation="ship.cancel_pickup"),
])

CHECKOUT = Saga("checkout", steps=[
    Step("reserve", action="inv.reserve", compensation="inv.release"),
    Child("ship", saga=SHIPPING, input=lambda data, results: {"order": data["order"],
                                                               "reservation": results["reserve"]["id"]}),
    Step("charge", action="pay.charge", compensation="pay.refund"),
])


def start(saga: Saga, data: dict, run_id: str = "parent-1") -> Transition:  # type: ignore[type-arg]
    return decide(saga, new_run(saga, run_id, data, "start"), Started(), NOW, ids)


def step(saga: Saga, run: RunState, outcome) -> Transition:  # type: ignore[no-untyped-def]
    return decide(saga, run, outcome, NOW, ids)


def sent(t: Transition) -> list[tuple[str, str]]:
    return [(c.step, c.kind) for c in t.commands]


def statuses(run: RunState) -> dict[str, str]:
    return {s.name: s.status.value for s in run.steps}


def to_child(t: Transition) -> Order:
    [order] = t.orders
    return order


def run_child_to_completion(child: Transition) -> Transition:
    t = step(SHIPPING, child.after, ActionSucceeded("label", {"label": "L1"}))
    return step(SHIPPING, t.after, ActionSucceeded("pickup", {"pickup": "P1"}))


def at_child_step() -> tuple[Transition, Transition]:
    """The parent past reserve, its child just started: (parent transition, child's Started)."""
    t = start(CHECKOUT, {"order": "o-1"})
    t = step(CHECKOUT, t.after, ActionSucceeded("reserve", {"id": "res-9"}))
    [child] = t.children
    return t, child


def test_a_child_step_starts_the_child_in_the_parents_transition_with_a_deterministic_id() -> None:
    t, child = at_child_step()

    # the parent dispatches no message for the step: the child's creation is in its transition
    assert sent(t) == [] and t.after.step("ship").status == StepStatus.RUNNING
    assert child.after.saga_id == child_id("parent-1", "ship") == t.after.step("ship").task_id
    assert child.after.saga_id == child_id("parent-1", "ship")  # the same id every time it is derived
    assert child_id("parent-1", "ship") != child_id("parent-2", "ship")
    # the child: its own run, its parent recorded, its first step dispatched, its input built
    assert child.after.saga_type == "shipping" and child.after.parent_id == "parent-1"
    assert child.after.parent_step == "ship" and child.after.caused_by == "start"
    assert child.after.input == {"order": "o-1", "reservation": "res-9"}
    assert sent(child) == [("label", "action")]
    assert [e.type for e in t.events] == ["StepSucceeded", "ChildStarted"]
    # recovery derives no message for a step that waits on a run
    assert commands_for(CHECKOUT, t.after) == ()


def test_a_completed_child_completes_its_step_with_the_childs_results_and_the_parent_goes_on() -> None:
    t, child = at_child_step()
    c = run_child_to_completion(child)

    # the child's last transition reports to the parent
    assert c.after.status == RunStatus.COMPLETED
    report = to_child(c)
    assert report == Order("parent-1", ChildFinished("ship", child.after.saga_id, RunStatus.COMPLETED,
                                                     {"label": {"label": "L1"}, "pickup": {"pickup": "P1"}}, None))
    t = step(CHECKOUT, t.after, report.outcome)
    assert t.after.step("ship").result == {"label": {"label": "L1"}, "pickup": {"pickup": "P1"}}
    assert sent(t) == [("charge", "action")]
    # a duplicate report changes nothing
    with pytest.raises(Ignored):
        step(CHECKOUT, t.after, report.outcome)


def test_a_compensated_child_is_a_failed_step_and_the_parent_compensates_what_came_before() -> None:
    t, child = at_child_step()
    c = step(SHIPPING, child.after, ActionSucceeded("label", {"label": "L1"}))
    c = step(SHIPPING, c.after, ActionFailed("pickup", ERR, retryable=False))
    assert sent(c) == [("label", "compensation")] and c.orders == ()  # not settled yet: no report
    c = step(SHIPPING, c.after, CompensationSucceeded("label"))
    assert c.after.status == RunStatus.COMPENSATED

    t = step(CHECKOUT, t.after, to_child(c).outcome)
    # the child undid itself: the step failed, nothing of it to compensate; reserve is released
    assert t.after.status == RunStatus.COMPENSATING and t.after.step("ship").status == StepStatus.FAILED
    assert "was compensated" in (t.after.step("ship").error or "")
    assert sent(t) == [("reserve", "compensation")] and t.orders == ()
    t = step(CHECKOUT, t.after, CompensationSucceeded("reserve"))
    assert t.after.status == RunStatus.COMPENSATED
    assert statuses(t.after) == {"reserve": "COMPENSATED", "ship": "FAILED", "charge": "PENDING"}


def test_a_parent_failing_later_compensates_its_completed_child_through_the_childs_own_compensations() -> None:
    t, child = at_child_step()
    c = run_child_to_completion(child)
    t = step(CHECKOUT, t.after, to_child(c).outcome)
    # Given the charge failing for good after the child completed
    t = step(CHECKOUT, t.after, ActionFailed("charge", ERR, retryable=False))

    # Then the parent orders the child compensated, and waits (no message of its own)
    order = to_child(t)
    assert order.saga_id == child.after.saga_id and isinstance(order.outcome, Compensate)
    assert sent(t) == [] and t.after.step("ship").status == StepStatus.COMPENSATING
    # the child compensates itself, newest first, with its own compensations
    c = step(SHIPPING, c.after, order.outcome)
    assert c.after.status == RunStatus.COMPENSATING and sent(c) == [("pickup", "compensation")]
    assert [e.type for e in c.events][:2] == ["SagaCompensationOrdered", "CompensationStarted"]
    c = step(SHIPPING, c.after, CompensationSucceeded("pickup"))
    assert sent(c) == [("label", "compensation")]
    c = step(SHIPPING, c.after, CompensationSucceeded("label"))
    assert c.after.status == RunStatus.COMPENSATED
    # the child's COMPENSATED is the step's compensation: then reserve, and the parent is done
    t = step(CHECKOUT, t.after, to_child(c).outcome)
    assert t.after.step("ship").status == StepStatus.COMPENSATED and sent(t) == [("reserve", "compensation")]
    t = step(CHECKOUT, t.after, CompensationSucceeded("reserve"))
    assert t.after.status == RunStatus.COMPENSATED
    # a second order to compensate the child changes nothing
    with pytest.raises(Ignored):
        step(SHIPPING, c.after, order.outcome)


def test_cancelling_the_parent_cancels_the_running_child_and_waits_until_it_is_settled() -> None:
    t, child = at_child_step()
    c = step(SHIPPING, child.after, ActionSucceeded("label", {"label": "L1"}))
    t = step(CHECKOUT, t.after, Cancel("customer asked", "ops"))

    # the child is ordered cancelled; the step stays RUNNING, reserve waits for it
    order = to_child(t)
    assert order.saga_id == child.after.saga_id and isinstance(order.outcome, Cancel)
    assert t.after.status == RunStatus.COMPENSATING and t.after.step("ship").status == StepStatus.RUNNING
    assert sent(t) == []
    c = step(SHIPPING, c.after, order.outcome)
    # pickup was in flight in the child: its outcome is unknown, so it is compensated, then label
    assert [e.type for e in c.events if e.step == "pickup"] == ["StepTimedOut", "CompensationDispatched"]
    assert sent(c) == [("pickup", "compensation")]
    c = step(SHIPPING, c.after, CompensationSucceeded("pickup"))
    assert sent(c) == [("label", "compensation")] and c.orders == ()
    c = step(SHIPPING, c.after, CompensationSucceeded("label"))
    assert c.after.status == RunStatus.COMPENSATED
    t = step(CHECKOUT, t.after, to_child(c).outcome)
    assert t.after.step("ship").status == StepStatus.FAILED and sent(t) == [("reserve", "compensation")]


def test_a_child_completing_while_its_cancel_is_on_the_way_is_compensated_once_its_report_arrives() -> None:
    t, child = at_child_step()
    t = step(CHECKOUT, t.after, Cancel("customer asked", "ops"))
    c = run_child_to_completion(child)  # the child finished before the cancel reached it
    with pytest.raises(Ignored):
        step(SHIPPING, c.after, to_child(t).outcome)  # a cancel of a COMPLETED run does nothing

    t = step(CHECKOUT, t.after, to_child(c).outcome)
    assert t.after.step("ship").status == StepStatus.COMPENSATING
    assert isinstance(to_child(t).outcome, Compensate)


def test_a_stuck_child_keeps_its_parent_step_waiting_until_an_operator_settles_it() -> None:
    t, child = at_child_step()
    c = step(SHIPPING, child.after, ActionSucceeded("label", {}))
    c = step(SHIPPING, c.after, ActionFailed("pickup", ERR, retryable=False))
    c = step(SHIPPING, c.after, CompensationFailed("label", ERR, retryable=False))
    assert c.after.status == RunStatus.FAILED
    with pytest.raises(Ignored) as ig:
        step(CHECKOUT, t.after, to_child(c).outcome)
    assert ig.value.event is not None and ig.value.event.type == "ChildNeedsOperator"
    # the operator resumes the child; once COMPENSATED, its parent hears of it
    c = step(SHIPPING, c.after, Resume(None, "fixed", "ops"))
    c = step(SHIPPING, c.after, CompensationSucceeded("label"))
    t = step(CHECKOUT, t.after, to_child(c).outcome)
    assert t.after.step("ship").status == StepStatus.FAILED and sent(t) == [("reserve", "compensation")]


def test_a_report_from_another_run_or_for_a_task_step_is_ignored() -> None:
    t, child = at_child_step()
    with pytest.raises(Ignored):
        step(CHECKOUT, t.after, ChildFinished("ship", "someone-else", RunStatus.COMPLETED))
    with pytest.raises(Ignored):
        step(CHECKOUT, t.after, ChildFinished("reserve", child.after.saga_id, RunStatus.COMPLETED))
    # and operators cannot redispatch a child step as if it were a message
    with pytest.raises(Ignored, match="child saga"):
        step(CHECKOUT, t.after, Resume("ship", "push", "ops"))


def test_child_input_that_the_child_refuses_fails_the_step_and_starts_nothing() -> None:
    bad = Saga("bad_input", steps=[
        Step("a", action="x.a", compensation="x.ua"),
        Child("kid", saga=SHIPPING, input=lambda data, results: data["missing"]),
    ])
    t = start(bad, {})
    t = step(bad, t.after, ActionSucceeded("a", {}))
    assert t.children == () and t.after.step("kid").status == StepStatus.FAILED
    assert "input function failed" in (t.after.step("kid").error or "")
    assert sent(t) == [("a", "compensation")]


def test_a_child_as_the_first_stage_is_created_with_the_parents_start_and_nests() -> None:
    inner = Saga("inner", steps=[Step("x", action="i.x", compensation=None)])
    middle = Saga("middle", steps=[Child("deeper", saga=inner)])
    outer = Saga("outer", steps=[Child("kid", saga=middle)])
    t = start(outer, {"a": 1}, run_id="outer-1")
    [mid] = t.children
    [leaf] = mid.children
    assert mid.after.parent_id == "outer-1" and leaf.after.parent_id == mid.after.saga_id
    assert leaf.after.input == {"a": 1} and sent(leaf) == [("x", "action")]


def test_a_completed_run_is_compensated_only_on_an_order_and_only_once() -> None:
    c = run_child_to_completion(at_child_step()[1])
    with pytest.raises(Ignored):
        step(SHIPPING, step(SHIPPING, c.after, Compensate("again")).after, Compensate("again"))
    # a run with no parent reports to nobody
    solo = start(SHIPPING, {})
    assert solo.orders == ()


def test_child_declarations_are_checked_when_made() -> None:
    with pytest.raises(DefinitionError, match="saga must be"):
        Child("ship", saga=42)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="input must be a function"):
        Child("ship", saga="shipping", input="nope")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="groups do not nest"):
        Parallel("g", [Parallel("inner", [Step("x", action="x.a", compensation=None)])])  # type: ignore[list-item]
    with pytest.raises(DefinitionError, match="unique"):
        Saga("dup", steps=[Step("ship", action="x.a", compensation=None), Child("ship", saga="shipping")])
    assert CHECKOUT.child("ship") is not None and CHECKOUT.child("reserve") is None
    assert CHECKOUT.stage_of("ship") == 1 and CHECKOUT.has("ship")


def test_sagas_that_start_each_other_at_once_fail_the_step_instead_of_recursing() -> None:
    from workflows import register_saga, registry

    loop_a = register_saga(Saga("cycle_a", steps=[Child("b", saga="cycle_b")]))
    register_saga(Saga("cycle_b", steps=[Child("a", saga="cycle_a")]))
    # the caller resolves named children (the runtime passes its registry's `child_definition`)
    t = decide(loop_a, new_run(loop_a, "parent-1", {}, "start"), Started(), NOW, ids,
               children=registry.child_definition)
    assert t.children == () and t.after.status == RunStatus.COMPENSATED
    assert "cycle_a -> cycle_b -> cycle_a" in (t.after.step("b").error or "")


def test_input_a_first_child_would_refuse_is_refused_at_the_parents_door() -> None:
    from pydantic import BaseModel

    from workflows import InvalidInput

    class Parcel(BaseModel):
        parcel_id: str

    strict = Saga("strict_kid", input_model=Parcel, steps=[Step("x", action="s.x", compensation=None)])
    parent = Saga("door", steps=[Child("kid", saga=strict, input=lambda data, results: data.get("parcel", {}))])
    with pytest.raises(InvalidInput, match="parcel_id"):
        parent.validate_input({"parcel": {"weight": 3}})
    assert parent.validate_input({"parcel": {"parcel_id": "p1"}}) == {"parcel": {"parcel_id": "p1"}}


GROUPED = Saga("grouped", steps=[
    Step("reserve", action="inv.reserve", compensation="inv.release"),
    Parallel("prepare", [Child("ship", saga=SHIPPING), Step("charge", action="pay.charge", compensation="pay.refund")]),
    Step("confirm", action="n.send", compensation=None),
])


def grouped_started() -> tuple[Transition, Transition]:
    t = start(GROUPED, {})
    t = step(GROUPED, t.after, ActionSucceeded("reserve", {}))
    [child] = t.children
    assert sent(t) == [("charge", "action")] and t.after.step("ship").status == StepStatus.RUNNING
    return t, child


def test_a_child_as_a_branch_of_a_group_runs_beside_its_sibling_and_the_group_joins_on_both() -> None:
    t, child = grouped_started()
    t = step(GROUPED, t.after, ActionSucceeded("charge", {"payment": 1}))
    assert sent(t) == []  # waiting for the child
    c = run_child_to_completion(child)
    t = step(GROUPED, t.after, to_child(c).outcome)
    assert sent(t) == [("confirm", "action")]


def test_a_sibling_failing_cancels_a_running_child_branch_and_waits_for_it() -> None:
    t, child = grouped_started()
    c = step(SHIPPING, child.after, ActionSucceeded("label", {}))
    # the charge fails for good while the child is running: no new work, so the child is cancelled
    t = step(GROUPED, t.after, ActionFailed("charge", ERR, retryable=False))
    order = to_child(t)
    assert isinstance(order.outcome, Cancel) and order.saga_id == child.after.saga_id
    assert sent(t) == [] and t.after.status == RunStatus.COMPENSATING
    c = step(SHIPPING, c.after, order.outcome)
    for name in ("pickup", "label"):
        c = step(SHIPPING, c.after, CompensationSucceeded(name))
    assert c.after.status == RunStatus.COMPENSATED
    # the child undid itself: then the stage before the group
    t = step(GROUPED, t.after, to_child(c).outcome)
    assert t.after.step("ship").status == StepStatus.FAILED and sent(t) == [("reserve", "compensation")]


def test_a_failed_group_compensates_its_completed_child_and_its_succeeded_sibling_together() -> None:
    t, child = grouped_started()
    t = step(GROUPED, t.after, ActionSucceeded("charge", {"payment": 1}))
    t = step(GROUPED, t.after, to_child(run_child_to_completion(child)).outcome)
    t = step(GROUPED, t.after, ActionFailed("confirm", ERR, retryable=False))
    # both branches of the group at once: the refund's message, the child's order
    assert sent(t) == [("charge", "compensation")] and isinstance(to_child(t).outcome, Compensate)
