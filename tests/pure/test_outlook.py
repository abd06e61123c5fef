"""What comes next (`core.outlook`): the steps still to run and the compensations that would run.

The plan is the compensation walker's own (`compensation_plan`): each test reads the outlook of a
running run, then makes the steps in flight fail for good and drives the engine through its
compensations (each one succeeding), and checks that the engine dispatched exactly the plan, stage
by stage, in its order. A line, a parallel group, a child saga and a wait. Pure: no broker, no database.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from workflows import Saga, Step
from workflows.core.definition import Child, Parallel, Wait
from workflows.core.engine import decide, new_run
from workflows.core.outlook import CompensationStage, compensation_plan, describe, outlook
from workflows.core.state import (ActionFailed, ActionSucceeded, ChildFinished, Compensate, CompensationFailed,
                                  CompensationSucceeded, ErrorInfo, Outcome, RunState, RunStatus, Side, Started,
                                  Transition, WaitTimedOut)

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
ERR = ErrorInfo("Boom", "it broke")
_n = iter(range(10**9))


def ids() -> str:
    return f"{next(_n):032x}"


def play(saga: Saga, *outcomes: Outcome, at: datetime = NOW) -> RunState:
    run = new_run(saga, "r1", {}, caused_by="start")
    for o in [Started(), *outcomes]:
        run = decide(saga, run, o, at, ids).after
    return run


def undone_in_order(saga: Saga, t: Transition, at: datetime = NOW) -> list[tuple[str, ...]]:
    """Drive `t`'s compensations to the end, each succeeding: what the engine compensated, one
    tuple per transition that dispatched compensations (a stage's rows together)."""
    out: list[tuple[str, ...]] = []
    pending = [t]
    while pending:
        t = pending.pop(0)
        cmds = [c.step for c in t.commands if c.kind is Side.COMPENSATION]
        children = {o.saga_id: s.name for o in t.orders if isinstance(o.outcome, Compensate)
                    for s in t.after.steps if s.task_id == o.saga_id}
        if cmds or children:
            out.append(tuple(sorted([*cmds, *children.values()])))
        run = t.after
        for step in cmds:
            nxt = decide(saga, run, CompensationSucceeded(step), at, ids)
            run = nxt.after
            pending.append(nxt)
        for child_id, step in children.items():
            nxt = decide(saga, run, ChildFinished(step, child_id, RunStatus.COMPENSATED, {}, "undone"), at, ids)
            run = nxt.after
            pending.append(nxt)
    assert run.status is RunStatus.COMPENSATED, run.status
    return out


def planned(stages: tuple[CompensationStage, ...]) -> list[tuple[str, ...]]:
    return [tuple(sorted(c.compensate)) for c in stages if c.compensate]


LINE = Saga("outlook_line", steps=[
    Step("validate", action="o.validate", compensation=None),
    Step("reserve", action="o.reserve", compensation="o.release"),
    Step("charge", action="o.charge", compensation="o.refund"),
    Step("ship", action="o.ship", compensation="o.cancel"),
    Step("notify", action="o.notify", compensation=None),
])


def test_a_line_shows_the_steps_to_run_and_the_compensations_newest_first() -> None:
    run = play(LINE, ActionSucceeded("validate", {}), ActionSucceeded("reserve", {}), ActionSucceeded("charge", {}))
    o = outlook(LINE.plan, run)
    assert o.to_run == (("ship",), ("notify",))
    assert o.hypothetical
    # validate has no compensation; ship, the step in flight, would have failed: nothing of it to undo
    assert planned(o.compensations) == [("charge",), ("reserve",)]
    assert describe(o)["compensations"] == [
        {"stage": 2, "compensate": ["charge"], "waits_for": [], "stuck": []},
        {"stage": 1, "compensate": ["reserve"], "waits_for": [], "stuck": []}]
    # and the engine does exactly that when ship fails now
    t = decide(LINE, run, ActionFailed("ship", ERR, retryable=False), NOW, ids)
    assert undone_in_order(LINE, t) == planned(o.compensations)


def test_a_compensating_run_shows_what_is_still_to_undo_and_a_stuck_one_where_it_stopped() -> None:
    run = play(LINE, ActionSucceeded("validate", {}), ActionSucceeded("reserve", {}), ActionSucceeded("charge", {}),
               ActionFailed("ship", ERR, retryable=False))
    o = outlook(LINE.plan, run)
    assert not o.hypothetical and o.to_run == ()
    assert o.compensations == (CompensationStage(2, (), ("charge",)), CompensationStage(1, ("reserve",)))
    # the walker acts on the plan's first stage: it waits for charge's compensation
    assert compensation_plan(LINE.plan, run.steps)[0].blocked
    stuck = decide(LINE, run, CompensationFailed("charge", ERR, retryable=False), NOW, ids).after
    assert stuck.status is RunStatus.FAILED
    assert outlook(LINE.plan, stuck).compensations == (CompensationStage(2, (), (), ("charge",)),
                                                        CompensationStage(1, ("reserve",)))


def test_a_finished_run_has_nothing_next() -> None:
    run = play(LINE, *(ActionSucceeded(s.name, {}) for s in LINE.steps))
    assert run.status is RunStatus.COMPLETED
    o = outlook(LINE.plan, run)
    assert o.to_run == () and o.compensations == ()


GROUP = Saga("outlook_group", steps=[
    Step("validate", action="g.validate", compensation="g.unvalidate"),
    Parallel("prepare", [Step("reserve", action="g.reserve", compensation="g.release"),
                         Step("charge", action="g.charge", compensation="g.refund"),
                         Step("quote", action="g.quote", compensation=None)]),
    Step("ship", action="g.ship", compensation="g.cancel"),
])


def test_a_parallel_group_is_one_stage_run_together_and_undone_together() -> None:
    run = play(GROUP, ActionSucceeded("validate", {}))
    o = outlook(GROUP.plan, run)
    assert o.to_run == (("reserve", "charge", "quote"), ("ship",))
    assert planned(o.compensations) == [("validate",)]
    # once the group is through and ship runs, the group's undoable branches are undone together
    run = play(GROUP, ActionSucceeded("validate", {}), ActionSucceeded("reserve", {}), ActionSucceeded("charge", {}),
               ActionSucceeded("quote", {}))
    o = outlook(GROUP.plan, run)
    assert o.to_run == (("ship",),)
    assert planned(o.compensations) == [("charge", "reserve"), ("validate",)]
    t = decide(GROUP, run, ActionFailed("ship", ERR, retryable=False), NOW, ids)
    assert undone_in_order(GROUP, t) == planned(o.compensations)


def test_a_group_with_a_branch_through_and_one_in_flight() -> None:
    run = play(GROUP, ActionSucceeded("validate", {}), ActionSucceeded("reserve", {}))
    o = outlook(GROUP.plan, run)
    assert o.to_run == (("charge", "quote"), ("ship",))
    # if charge and quote failed now: reserve (through) is undone, then validate
    assert planned(o.compensations) == [("reserve",), ("validate",)]
    t = decide(GROUP, run, ActionFailed("charge", ERR, retryable=False), NOW, ids)
    assert t.after.status is RunStatus.COMPENSATING
    # the engine waits for quote (still in flight); it fails too, as the outlook supposed
    assert compensation_plan(GROUP.plan, t.after.steps)[0].waits_for == ("quote",)
    t = decide(GROUP, t.after, ActionFailed("quote", ERR, retryable=False), NOW, ids)
    assert undone_in_order(GROUP, t) == planned(o.compensations)


SHIPPING = Saga("outlook_shipping", steps=[
    Step("label", action="s.label", compensation="s.void"),
    Step("pickup", action="s.pickup", compensation="s.cancel_pickup"),
])

CHECKOUT = Saga("outlook_checkout", steps=[
    Step("reserve", action="c.reserve", compensation="c.release"),
    Child("ship", saga=SHIPPING, input=lambda data, results: {}),
    Step("charge", action="c.charge", compensation="c.refund"),
])


def test_a_child_is_a_stage_and_a_completed_child_is_undone_through_its_own_compensations() -> None:
    run = play(CHECKOUT, ActionSucceeded("reserve", {}))
    o = outlook(CHECKOUT.plan, run)
    assert o.to_run == (("ship",), ("charge",))
    assert planned(o.compensations) == [("reserve",)]  # the child running would have failed: it undoes itself
    child_id = run.step("ship").task_id
    assert child_id is not None
    run = decide(CHECKOUT, run, ChildFinished("ship", child_id, RunStatus.COMPLETED, {}), NOW, ids).after
    o = outlook(CHECKOUT.plan, run)
    assert o.to_run == (("charge",),)
    assert planned(o.compensations) == [("ship",), ("reserve",)]
    t = decide(CHECKOUT, run, ActionFailed("charge", ERR, retryable=False), NOW, ids)
    assert undone_in_order(CHECKOUT, t) == planned(o.compensations)


APPROVAL = Saga("outlook_wait", steps=[
    Step("reserve", action="w.reserve", compensation="w.release"),
    Step("charge", action="w.charge", compensation="w.refund"),
    Wait("approval", signal="approved", timeout=timedelta(days=2)),
    Step("ship", action="w.ship", compensation="w.cancel"),
])


def test_a_parked_run_shows_its_wait_then_the_rest_and_a_timeout_undoes_the_plan() -> None:
    run = play(APPROVAL, ActionSucceeded("reserve", {}), ActionSucceeded("charge", {}))
    assert run.status is RunStatus.WAITING
    o = outlook(APPROVAL.plan, run)
    assert o.to_run == (("approval",), ("ship",))
    # a wait has no effect: nothing of it is undone
    assert planned(o.compensations) == [("charge",), ("reserve",)]
    t = decide(APPROVAL, run, WaitTimedOut("approval"), NOW + timedelta(days=3), ids)
    assert undone_in_order(APPROVAL, t, NOW + timedelta(days=3)) == planned(o.compensations)
