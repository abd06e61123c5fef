"""Child sagas in the in-process tier: a real store (SQLite), the real decision loop and sweeper,
a recording dispatcher whose messages the test delivers (`Worker` of workflows.testing). The
clock is the test's; nothing sleeps. The same paths run on PostgreSQL with real workers in
tests/servers/test_children.py.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.support.inproc_steps import act, calls, settle, undo
from workflows.testing import Clock, Worker
from workflows import Parallel, RetryPolicy, Saga, Step, get_saga, register_saga, start_saga
from workflows.core.definition import Child, child_id
from workflows.operations.actions import cancel
from workflows.operations.sweeper import sweep
from workflows.runtime.container import Runtime
from workflows.runtime.loop import DecisionLoop

POLICY = RetryPolicy(max_attempts=2, initial_interval=1.0, jitter=False)


def step(name: str) -> Step:
    return Step(name, action=act, compensation=undo, retry=POLICY, compensation_retry=POLICY, timeout=30)


KID = Saga("inproc.kid", steps=[step("k1"), step("k2")])
PARENT = register_saga(Saga("inproc.parent", steps=[
    step("a"),
    Child("kid", saga=KID, input=lambda data, results: {
        "behaviour": data.get("kid_behaviour", {}), "from_a": results["a"]["step"],
        "compensation_behaviour": data.get("kid_compensation_behaviour", {})}),
    step("c"),
]))
FIRST = register_saga(Saga("inproc.child_first", steps=[Child("kid", saga=KID), step("z")]))
GROUP = register_saga(Saga("inproc.child_group", steps=[
    step("a"),
    Parallel("pair", [Child("kid", saga=KID), step("b")]),
]))


def types(view: Any, *steps: str) -> list[tuple[str, str | None]]:
    return [(e.type, e.step) for e in view.events if not steps or e.step in steps]


def test_a_child_saga_runs_as_a_run_of_its_own_and_its_results_are_the_steps_result(
        rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("inproc.parent", {})
    worker.drain()

    parent = get_saga(saga_id)
    kid_id = child_id(saga_id, "kid")
    kid = get_saga(kid_id)
    assert parent.state == "COMPLETED" and kid.state == "COMPLETED"
    # the child records its parent, the parent lists its child (the tree)
    assert (kid.parent_id, kid.parent_step) == (saga_id, "kid")
    assert [(c.id, c.saga_type, c.state, c.parent_step) for c in parent.children] == [
        (kid_id, "inproc.kid", "COMPLETED", "kid")]
    assert kid.input == {"behaviour": {}, "from_a": "a", "compensation_behaviour": {}}
    # the step's result is the child's results; the next step sees it
    assert parent.step("kid").result == {"k1": {"step": "k1", "saw": []}, "k2": {"step": "k2", "saw": ["k1"]}}
    assert parent.step("kid").task_id == kid_id and parent.step("c").result == {"step": "c", "saw": ["a", "kid"]}
    assert calls == ["action:a:1", "action:k1:1", "action:k2:1", "action:c:1"]
    assert ("ChildStarted", "kid") in types(parent) and types(kid)[0] == ("SagaCreated", None)
    assert kid.events[0].detail["parent_id"] == saga_id


def test_the_childs_messages_carry_the_childs_id_first(rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("inproc.parent", {})
    seen: list[tuple[Any, Any]] = []
    for _ in range(10):
        sent = rt.dispatcher.take()  # type: ignore[attr-defined]
        if not sent:
            break
        for m in sent:
            seen.append((m.args[0], m.step))
            worker.deliver(m)
    kid_id = child_id(saga_id, "kid")
    assert seen == [(saga_id, "a"), (kid_id, "k1"), (kid_id, "k2"), (saga_id, "c")]


def test_a_parent_failing_later_compensates_its_child_through_the_childs_own_compensations(
        rt: Runtime, worker: Worker, clock: Clock) -> None:
    saga_id = start_saga("inproc.parent", {"behaviour": {"c": {"fail": "permanent"}}})
    settle(worker, clock)

    parent, kid = get_saga(saga_id), get_saga(child_id(saga_id, "kid"))
    assert parent.state == "COMPENSATED" and kid.state == "COMPENSATED"
    # newest first across the tree: the child's steps (its own compensations), then a
    assert [c for c in calls if c.startswith("compensation")] == [
        "compensation:k2:1", "compensation:k1:1", "compensation:a:1"]
    assert parent.step("kid").status == "COMPENSATED" and parent.step("c").status == "FAILED"
    assert ("ChildCompensationOrdered", "kid") in types(parent)
    kid_types = types(kid)
    assert kid_types[kid_types.index(("SagaCompleted", None)) + 1:] == [
        ("SagaCompensationOrdered", None), ("CompensationStarted", None), ("CompensationDispatched", "k2"),
        ("StepCompensated", "k2"), ("CompensationDispatched", "k1"), ("StepCompensated", "k1"),
        ("SagaCompensated", None)]
    assert kid.failure_reason is not None and f"parent {saga_id}" in kid.failure_reason


def test_a_child_that_fails_is_a_failed_step_and_the_parent_compensates_what_came_before(
        rt: Runtime, worker: Worker, clock: Clock) -> None:
    saga_id = start_saga("inproc.parent", {"kid_behaviour": {"k2": {"fail": "permanent"}}})
    settle(worker, clock)

    parent, kid = get_saga(saga_id), get_saga(child_id(saga_id, "kid"))
    assert kid.state == "COMPENSATED" and parent.state == "COMPENSATED"
    assert parent.step("kid").status == "FAILED" and "was compensated" in (parent.step("kid").error or "")
    assert parent.step("c").status == "PENDING"
    assert [c for c in calls if c.startswith("compensation")] == ["compensation:k1:1", "compensation:a:1"]


def test_cancelling_the_parent_cancels_its_running_child_and_waits_for_it(
        rt: Runtime, worker: Worker, clock: Clock) -> None:
    saga_id = start_saga("inproc.parent", {})
    # deliver a, then k1, so the child is running k2
    for _ in range(2):
        for m in rt.dispatcher.take():  # type: ignore[attr-defined]
            worker.deliver(m)
    kid_id = child_id(saga_id, "kid")
    assert get_saga(kid_id).step("k2").status == "RUNNING"

    view = cancel(saga_id, reason="customer asked", who="ada")

    kid = get_saga(kid_id)
    # the child was cancelled in the same pass; the parent waits on it, a is not yet undone
    assert view.state == "COMPENSATING" and view.step("kid").status == "RUNNING"
    assert kid.state == "COMPENSATING" and ("SagaCancelled", None) in types(kid)
    assert view.step("a").status == "SUCCEEDED"
    settle(worker, clock)
    parent, kid = get_saga(saga_id), get_saga(kid_id)
    assert kid.state == "COMPENSATED" and parent.state == "COMPENSATED"
    assert [c for c in calls if c.startswith("compensation")] == [
        "compensation:k2:1", "compensation:k1:1", "compensation:a:1"]


def test_a_child_as_the_first_stage_is_created_with_its_parent(rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("inproc.child_first", {"x": 1})
    assert get_saga(child_id(saga_id, "kid")).state == "RUNNING"  # written with the parent's creation
    worker.drain()
    assert get_saga(saga_id).state == "COMPLETED"


@pytest.fixture
def lost_orders(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every order for another run is lost (as if the process died right after the commit)."""
    lost: list[Any] = []
    monkeypatch.setattr(DecisionLoop, "deliver", lambda self, order, by: lost.append(order))
    return lost


def test_a_childs_report_lost_after_its_last_commit_reaches_the_parent_through_the_sweeper(
        rt: Runtime, worker: Worker, clock: Clock, lost_orders: list[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    saga_id = start_saga("inproc.parent", {})
    worker.drain()
    kid_id = child_id(saga_id, "kid")
    # the child completed, its report to the parent was lost: the parent still waits
    assert get_saga(kid_id).state == "COMPLETED" and get_saga(saga_id).step("kid").status == "RUNNING"
    assert [type(o.outcome).__name__ for o in lost_orders] == ["ChildFinished"]
    monkeypatch.undo()

    # within the grace period the sweeper leaves it to the reporter; after it, it reports
    assert sweep(rt, now=clock.now).children == []
    report = sweep(rt, now=clock.now + timedelta(seconds=rt.timing.dispatch_grace + 1))
    assert report.children == [f"{saga_id}:kid"]
    worker.drain()
    parent = get_saga(saga_id)
    assert parent.state == "COMPLETED" and parent.step("kid").result is not None
    assert [e.detail["by"] for e in parent.events if e.type == "StepSucceeded" and e.step == "kid"] == ["sweeper"]
    # a second sweep finds nothing owed
    assert sweep(rt, now=clock.now + timedelta(seconds=rt.timing.dispatch_grace + 1)).children == []


def test_a_lost_order_to_compensate_the_child_is_sent_again_by_the_sweeper(
        rt: Runtime, worker: Worker, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    saga_id = start_saga("inproc.parent", {"behaviour": {"c": {"fail": "permanent"}}})
    # everything goes through until c fails; then the order to compensate the child is lost
    real = DecisionLoop.deliver

    def drop_compensate(self: DecisionLoop, order: Any, *, by: str) -> Any:
        if type(order.outcome).__name__ == "Compensate":
            return None
        return real(self, order, by=by)

    monkeypatch.setattr(DecisionLoop, "deliver", drop_compensate)
    settle(worker, clock)
    kid_id = child_id(saga_id, "kid")
    assert get_saga(saga_id).step("kid").status == "COMPENSATING" and get_saga(kid_id).state == "COMPLETED"
    monkeypatch.undo()

    report = sweep(rt, now=clock.now + timedelta(seconds=rt.timing.dispatch_grace + 1))
    assert report.children == [f"{saga_id}:kid"]
    settle(worker, clock)
    assert get_saga(kid_id).state == "COMPENSATED" and get_saga(saga_id).state == "COMPENSATED"
    assert [c for c in calls if c.startswith("compensation")] == [
        "compensation:k2:1", "compensation:k1:1", "compensation:a:1"]


def test_a_lost_cancel_of_the_child_is_sent_again_by_the_sweeper(
        rt: Runtime, worker: Worker, clock: Clock, lost_orders: list[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    saga_id = start_saga("inproc.parent", {})
    for m in rt.dispatcher.take():  # type: ignore[attr-defined]
        worker.deliver(m)  # a: the child is started, its k1 message sent
    cancel(saga_id, reason="stop", who="ada")
    kid_id = child_id(saga_id, "kid")
    assert get_saga(kid_id).state == "RUNNING" and [type(o.outcome).__name__ for o in lost_orders] == ["Cancel"]
    monkeypatch.undo()

    report = sweep(rt, now=clock.now + timedelta(seconds=rt.timing.dispatch_grace + 1))
    assert report.children == [f"{saga_id}:kid"]
    settle(worker, clock)
    assert get_saga(kid_id).state == "COMPENSATED" and get_saga(saga_id).state == "COMPENSATED"


def test_a_lost_first_message_of_the_child_is_sent_again_by_the_sweeper(
        rt: Runtime, worker: Worker, clock: Clock) -> None:
    # Given a's report committed with the child's creation, and the child's first message lost
    saga_id = start_saga("inproc.parent", {})
    for m in rt.dispatcher.take():  # type: ignore[attr-defined]
        worker.deliver(m)
    kid_id = child_id(saga_id, "kid")
    assert [m.step for m in rt.dispatcher.take()] == ["k1"]  # type: ignore[attr-defined]  # never reaches the broker
    deadline = rt.store.load(kid_id).step("k1").deadline_at
    assert deadline is not None

    # When the sweeper passes its deadline: the child was created, nothing heard since: sent again
    report = sweep(rt, now=deadline + timedelta(seconds=1))
    assert report.redispatched == [f"{kid_id}:k1"] and report.timed_out == []
    worker.drain()
    assert get_saga(kid_id).state == "COMPLETED" and get_saga(saga_id).state == "COMPLETED"


def test_a_child_whose_compensation_is_stuck_keeps_its_parent_waiting_until_an_operator_resumes_it(
        rt: Runtime, worker: Worker, clock: Clock) -> None:
    from tests.support.inproc_steps import switched_off
    from workflows.operations.actions import resume

    # Given a child whose k2 fails for good, and k1's compensation fails while switched off
    switched_off.add("k1")
    saga_id = start_saga("inproc.parent", {"kid_behaviour": {"k2": {"fail": "permanent"}},
                                           "kid_compensation_behaviour": {"k1": {"switch": True}}})
    settle(worker, clock)
    kid_id = child_id(saga_id, "kid")
    assert get_saga(kid_id).state == "FAILED"
    # the parent waits on its child; its history says why
    parent = get_saga(saga_id)
    assert parent.state == "RUNNING" and parent.step("kid").status == "RUNNING"
    assert ("ChildNeedsOperator", "kid") in types(parent)

    # When the operator fixes k1's service and resumes the child
    switched_off.clear()
    resume(kid_id, reason="refund service back", who="ada")
    settle(worker, clock)

    # Then the child is COMPENSATED, and its parent compensates what came before it
    assert get_saga(kid_id).state == "COMPENSATED" and get_saga(saga_id).state == "COMPENSATED"
    assert get_saga(saga_id).step("a").status == "COMPENSATED"


def test_a_redelivery_after_the_commit_that_started_the_child_publishes_the_childs_first_message(
        rt: Runtime, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a's report committed (with the child's creation) and the process gone before publishing
    saga_id = start_saga("inproc.parent", {})
    [a] = rt.dispatcher.take()  # type: ignore[attr-defined]
    monkeypatch.setattr(DecisionLoop, "publish", lambda self, t: None)
    worker.deliver(a)
    monkeypatch.undo()
    kid_id = child_id(saga_id, "kid")
    assert rt.dispatcher.take() == [] and get_saga(kid_id).state == "RUNNING"  # type: ignore[attr-defined]

    # When the broker redelivers a's message
    worker.deliver(a, redelivered=True)

    # Then it ran nothing again and sent the child's first message; the saga completes
    assert [(m.args[0], m.step) for m in rt.dispatcher.sent] == [(kid_id, "k1")]  # type: ignore[attr-defined]
    worker.drain()
    assert get_saga(saga_id).state == "COMPLETED" and calls.count("action:a:1") == 1


def test_a_group_whose_task_branch_fails_cancels_its_running_child_branch_then_undoes_the_rest(
        rt: Runtime, worker: Worker, clock: Clock) -> None:
    # Given a, then a group of the child saga and step b, which fails for good
    saga_id = start_saga("inproc.child_group", {"behaviour": {"b": {"fail": "permanent"}}})
    for m in rt.dispatcher.take():  # type: ignore[attr-defined]
        worker.deliver(m)  # a: the group starts, b's message and the child's k1 go out together
    kid_id = child_id(saga_id, "kid")
    sent = rt.dispatcher.take()  # type: ignore[attr-defined]
    assert sorted((m.args[0], m.step) for m in sent) == sorted([(kid_id, "k1"), (saga_id, "b")])
    [b] = [m for m in sent if m.step == "b"]
    [k1] = [m for m in sent if m.step == "k1"]

    # When b fails while the child is running: the child is cancelled in the same pass
    worker.deliver(b)
    assert get_saga(kid_id).state == "COMPENSATING" and get_saga(saga_id).step("kid").status == "RUNNING"
    worker.deliver(k1)  # k1's message was in flight: it is stale now, k1 does not run
    settle(worker, clock)

    # Then the child settled COMPENSATED: k1 never ran, but it was in flight when the child was
    # cancelled, so its outcome was unknown and it was compensated (on a key never used); then a
    assert get_saga(kid_id).state == "COMPENSATED" and get_saga(saga_id).state == "COMPENSATED"
    assert get_saga(kid_id).step("k1").error == "cancelled: its parent is compensating: step 'b' failed: " \
                                               "PermanentError: b refuses"
    assert "action:k1:1" not in calls
    assert [c for c in calls if c.startswith("compensation")] == ["compensation:k1:1", "compensation:a:1"]
