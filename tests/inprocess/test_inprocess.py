"""The in-process tier: step handling, the sweeper and operator actions without a broker.

A real store (SQLite in a temporary folder) and the real decision loop; the dispatcher records what
would be published (`RecordingDispatcher`), and `Worker` below delivers those messages to
`handle_step` the way a Celery worker would (Celery's own retry is a message of the same task id
due at its ETA). The clock is the test's: it moves with `clock.advance(...)`, nothing sleeps. The
same paths run against Redis, PostgreSQL and real workers in the other test files.
"""
from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from workflows import (Parallel, Saga, Step, StepContext, register_saga, start_saga,
                       step_task)
from workflows.choreography import Choreography
from workflows.choreography.bus import NoPublisher
from workflows.core.errors import InvalidOperation
from workflows.core.steps import step_tasks
from workflows.operations.actions import cancel, resume
from workflows.operations.dead_letters import redrive
from workflows.operations.sweeper import sweep
from workflows.orchestration.inline import InlineBudget
from workflows.orchestration.step_task import Delivery, handle_step
from tests.support.inproc_steps import POLICY, act, calls, settle, switched_off, undo
from workflows.testing import Clock, Worker
from workflows.runtime.container import Runtime, activate
from workflows.runtime.dispatch import RecordingDispatcher, Sent
from workflows.runtime.settings import Settings
from workflows.store import SagaStore
from workflows.store.db import migrate

LINE = register_saga(Saga("inproc.line", steps=[
    Step("a", action=act, compensation=undo, retry=POLICY, compensation_retry=POLICY, timeout=30),
    Step("b", action=act, compensation=None, retry=POLICY, compensation_retry=POLICY, timeout=30),
    Step("c", action=act, compensation=undo, retry=POLICY, compensation_retry=POLICY, timeout=30),
]))


def failed_on_compensating_a(worker: Worker, clock: Clock) -> str:
    """A saga FAILED: step c failed for good, and a's compensation fails while `a` is switched off."""
    switched_off.add("a")
    saga_id = start_saga("inproc.line", {"behaviour": {"c": {"fail": "permanent"}},
                                         "compensation_behaviour": {"a": {"switch": True}}})
    settle(worker, clock)
    return saga_id


def steps_sent(sent: list[Sent]) -> list[tuple[str | None, str | None]]:
    return [(m.step, m.command.kind if m.command else None) for m in sent if m.kind == "step"]


# ------------------------------------------------------------------ steps


def test_a_saga_runs_step_after_step_each_message_at_the_version_it_expects(rt: Runtime, worker: Worker) -> None:
    # Given a three-step saga started in this process
    saga_id = start_saga("inproc.line", {})
    [first] = rt.dispatcher.sent  # type: ignore[attr-defined]
    assert (first.step, first.kwargs["version"], first.args) == ("a", 2, [saga_id, "a"])

    # When every message is delivered
    worker.drain()

    # Then it completed, each step seeing the results before it, ids and times from the runtime
    view = rt.store.get(saga_id)
    assert view.state == "COMPLETED" and calls == ["action:a:1", "action:b:1", "action:c:1"]
    assert view.step("c").result == {"step": "c", "saw": ["a", "b"]}
    assert view.created_at == rt.clock() and view.step("a").task_id == f"{saga_id}.a.action.00000000"


def test_a_permanent_failure_compensates_newest_first_and_publishes_each_compensation(rt: Runtime,
                                                                                       worker: Worker) -> None:
    start_saga("inproc.line", {"behaviour": {"c": {"fail": "permanent"}}})
    published: list[Sent] = []
    while batch := worker.dispatcher.take():  # deliver what was sent, keeping a copy of it
        published += batch
        for m in batch:
            worker.deliver(m)

    assert steps_sent(published) == [("a", "action"), ("b", "action"), ("c", "action"), ("a", "compensation")]
    assert calls == ["action:a:1", "action:b:1", "action:c:1", "compensation:a:1"]


def test_a_retry_waits_for_its_countdown_on_the_test_clock(rt: Runtime, clock: Clock, worker: Worker) -> None:
    # Given step a failing twice with a transient error (policy: 2 s, then 4 s, no jitter)
    saga_id = start_saga("inproc.line", {"behaviour": {"a": {"fail_times": 2}}})

    # When the messages are delivered, the first retry waits for its ETA
    worker.drain()
    assert calls == ["action:a:1"] and rt.store.get(saga_id).state == "RUNNING"
    [(waiting, retries)] = worker.waiting
    assert waiting.eta == clock.now + timedelta(seconds=2) and retries == 1
    clock.advance(2)
    worker.drain()
    assert calls == ["action:a:1", "action:a:2"]
    clock.advance(4)
    worker.drain()

    # Then the third attempt succeeded and the saga completed; the history says when each retry was due
    view = rt.store.get(saga_id)
    assert view.state == "COMPLETED" and view.step("a").attempts == 3
    assert [e.detail["retry_in"] for e in view.events if e.type == "StepAttemptFailed"] == [2.0, 4.0]


def test_a_duplicate_delivery_changes_nothing_and_publishes_nothing(rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("inproc.line", {})
    [m] = rt.dispatcher.take()  # type: ignore[attr-defined]
    worker.deliver(m)
    version = rt.store.load(saga_id).version
    rt.dispatcher.take()  # type: ignore[attr-defined]  (step b's message)

    worker.deliver(m)  # the same message again, not marked redelivered: another copy of it

    assert rt.dispatcher.sent == []  # type: ignore[attr-defined]
    assert rt.store.load(saga_id).version == version and calls == ["action:a:1"]
    assert rt.store.get(saga_id).event_types("a")[-1] == "DuplicateIgnored"


def test_a_redelivery_after_a_lost_publish_sends_the_follow_up_once(rt: Runtime, worker: Worker) -> None:
    # Given step a's outcome committed, and the broker down when its follow-up was published
    saga_id = start_saga("inproc.line", {})
    [m] = rt.dispatcher.take()  # type: ignore[attr-defined]
    rt.dispatcher.fail = ConnectionError("broker down")  # type: ignore[attr-defined]
    with pytest.raises(ConnectionError):
        worker.deliver(m)
    rt.dispatcher.fail = None  # type: ignore[attr-defined]
    assert rt.store.load(saga_id).step("b").status.value == "RUNNING"

    # When the broker redelivers the unacknowledged message
    worker.deliver(m, redelivered=True)

    # Then step a does not run again; step b's message is sent, once
    assert calls == ["action:a:1"]
    assert steps_sent(rt.dispatcher.sent) == [("b", "action")]  # type: ignore[attr-defined]
    assert "FollowUpRepublished" in rt.store.get(saga_id).event_types("a")


def test_a_step_report_is_one_read_and_one_write_then_the_publish(rt: Runtime, worker: Worker,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a store and a dispatcher that note every call, in order
    order: list[str] = []
    store: SagaStore = rt.store
    for name in ("load", "commit", "record", "create_run"):
        real = getattr(store, name)
        monkeypatch.setattr(store, name, (lambda n, f: lambda *a, **k: (order.append(n), f(*a, **k))[1])(name, real))
    send = rt.dispatcher.send_step
    monkeypatch.setattr(rt.dispatcher, "send_step", lambda run, cmd: (order.append("publish"), send(run, cmd))[1])
    start_saga("inproc.line", {})
    [m] = rt.dispatcher.take()  # type: ignore[attr-defined]
    order.clear()

    # When step a's message is handled
    worker.deliver(m)

    # Then the path is load -> decide -> commit -> publish, nothing else touches the store
    assert order == ["load", "commit", "publish"]


# ------------------------------------------------------------------ dead letters


def test_an_exhausted_action_is_dead_lettered_after_commit_and_marked_sent(rt: Runtime, clock: Clock,
                                                                           worker: Worker) -> None:
    saga_id = start_saga("inproc.line", {"behaviour": {"b": {"fail_times": 9}}})
    settle(worker, clock)

    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED" and view.step("b").attempts == 3
    [dl] = view.dead_letters
    assert (dl.kind, dl.step, dl.task_name, dl.queue, dl.attempts) == ("action", "b", "inproc.act", "inproc", 3)
    assert dl.kwargs["attempt"] == 3 and "ConnectionError" in dl.exception
    # its broker copy was published after the commit, and the row says so
    assert dl.id in worker.published_dead_letters
    assert rt.store.unsent_dead_letters(clock.now + timedelta(days=1)) == []


class DeadLettersDown(RecordingDispatcher):
    """Step messages go out; the dead-letter queue is unreachable."""

    down: bool = True

    def send_dead_letter(self, body: dict[str, Any]) -> None:
        if self.down:
            raise ConnectionError("dead_letter queue unreachable")
        super().send_dead_letter(body)


def test_a_dead_letter_whose_copy_was_not_sent_is_sent_by_the_sweeper(tmp_path: Path, clock: Clock) -> None:
    # Given a runtime whose broker refuses the dead-letter copy when the action runs out of retries
    url = f"sqlite:///{tmp_path / 'dl.db'}"
    migrate(url)
    dispatcher = DeadLettersDown()
    counter = itertools.count(1)
    runtime = Runtime(app=None, settings=Settings(database_url=url, data_dir=tmp_path), clock=clock,
                      ids=lambda: f"{next(counter):032x}", _dispatcher=dispatcher)
    calls.clear()
    with activate(runtime):
        worker = Worker(runtime, dispatcher)
        saga_id = start_saga("inproc.line", {"behaviour": {"a": {"fail_times": 9}}})
        settle(worker, clock)
        [dl] = runtime.store.get(saga_id).dead_letters
        assert [d.id for d in runtime.store.unsent_dead_letters(clock.now)] == [dl.id]  # committed, not sent

        # When the broker is back and the sweeper runs, before and after the grace period
        dispatcher.down = False
        dispatcher.take()
        assert sweep(runtime, now=clock.now).dead_letters_sent == [dl.id]

        # Then the copy went out once and the row is marked sent; a second sweep sends nothing
        assert [m.kwargs["dead_letter_id"] for m in dispatcher.dead_letters()] == [dl.id]
        assert runtime.store.unsent_dead_letters(clock.now + timedelta(days=1)) == []
        assert sweep(runtime, now=clock.now + timedelta(minutes=1)).dead_letters_sent == []


# ------------------------------------------------------------------ the sweeper


def test_a_lost_first_message_is_sent_again_then_a_lost_step_times_out(rt: Runtime, clock: Clock,
                                                                       worker: Worker) -> None:
    # Given a saga whose first message is lost
    saga_id = start_saga("inproc.line", {})
    rt.dispatcher.take()  # type: ignore[attr-defined]
    deadline = rt.store.load(saga_id).step("a").deadline_at
    assert deadline is not None

    # When the sweeper runs before and after the step's deadline (30 s + the dispatch grace)
    assert sweep(rt, now=deadline - timedelta(seconds=1)).redispatched == []
    assert sweep(rt, now=deadline + timedelta(seconds=1)).redispatched == [f"{saga_id}:a"]
    [again] = rt.dispatcher.take()  # type: ignore[attr-defined]
    assert again.step == "a"

    # and that message is lost too: the next deadline times the step out (its effect is unknown)
    second = rt.store.load(saga_id).step("a").deadline_at
    assert second is not None
    assert sweep(rt, now=second + timedelta(seconds=1)).timed_out == [f"{saga_id}:a"]
    worker.drain()

    # Then a, whose outcome is unknown, is compensated; nothing was run twice
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED" and calls == ["compensation:a:1"]


# ------------------------------------------------------------------ operators


def test_cancel_while_a_step_is_in_flight_compensates_what_may_have_happened(rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("inproc.line", {})
    [m] = rt.dispatcher.take()  # type: ignore[attr-defined]
    worker.deliver(m)  # a succeeded, b is in flight
    [b] = rt.dispatcher.take()  # type: ignore[attr-defined]

    cancel(saga_id, reason="customer asked", who="ada")
    worker.drain()
    worker.deliver(b)  # b's message arrives after the cancel: stale, not run

    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED" and calls == ["action:a:1", "compensation:a:1"]
    assert view.step("b").status == "TIMED_OUT" and "StaleMessageIgnored" in view.event_types("b")


def test_two_redrives_of_one_dead_letter_decided_together_resume_the_compensation_once(
        rt: Runtime, clock: Clock, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    from workflows.core.state import DeadLetterClosure, Resume

    # Given a saga FAILED because a's compensation ran out of retries
    saga_id = start_saga("inproc.line", {"behaviour": {"c": {"fail": "permanent"}},
                                         "compensation_behaviour": {"a": {"fail_times": 9}}})
    settle(worker, clock)
    run = rt.store.load(saga_id)
    assert run.status.value == "FAILED"
    [dl] = rt.store.dead_letters(saga_id=saga_id)

    # When two operators redrive it on the same snapshot (both read it OPEN)
    claim = DeadLetterClosure("REDRIVEN", "redriven by x", dead_letter_id=dl.id)
    first = rt.loop.commit(LINE, saga_id, Resume("a", "", "x"), by="operator:x", state=run, closures=(claim,))
    with pytest.raises(InvalidOperation, match="handled already"):
        rt.loop.commit(LINE, saga_id, Resume("a", "", "y"), by="operator:y", state=first.state,
                       closures=(DeadLetterClosure("REDRIVEN", "redriven by y", dead_letter_id=dl.id),))

    # Then the second wrote nothing: the run moved once, the dead letter is the first one's
    assert first.transition is not None and rt.store.load(saga_id).version == run.version + 1
    assert rt.store.dead_letter(dl.id).resolution == "redriven by x"
    with pytest.raises(InvalidOperation):
        redrive(dl.id, who="z")


def test_resume_of_a_failed_saga_resolves_its_dead_letters_in_the_same_write(rt: Runtime, clock: Clock,
                                                                             worker: Worker) -> None:
    # Given a saga FAILED because a's compensation fails until its cause is fixed
    saga_id = failed_on_compensating_a(worker, clock)
    assert rt.store.load(saga_id).status.value == "FAILED"
    assert [d.status for d in rt.store.get(saga_id).dead_letters] == ["OPEN"]

    # When the cause is fixed and an operator resumes it
    switched_off.clear()
    resume(saga_id, reason="fixed", who="bob")
    worker.drain()

    # Then it compensated, and the same transition that resumed it resolved its dead letter
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED"
    [dl] = view.dead_letters
    assert (dl.status, dl.resolution) == ("REDRIVEN", "resumed by bob")
    resumed = next(e for e in view.events if e.type == "CompensationResumed")
    assert dl.resolved_at == resumed.at


def test_a_refused_operator_action_is_on_the_record_with_who_and_why(rt: Runtime, worker: Worker) -> None:
    # Given a completed saga
    saga_id = start_saga("inproc.line", {})
    worker.drain()

    # When an operator tries to resume it, and another to cancel it
    with pytest.raises(InvalidOperation, match="not FAILED"):
        resume(saga_id, reason="looks stuck", who="dora")
    with pytest.raises(InvalidOperation, match="only a RUNNING saga"):
        cancel(saga_id, reason="customer asked", who="eve")

    # Then both refusals are history rows: who, what, why it was asked, why it was refused
    refusals = [e for e in rt.store.get(saga_id).events if e.type == "OperatorActionRefused"]
    assert [(e.detail["action"], e.detail["who"], e.detail["reason"], e.detail["by"]) for e in refusals] == [
        ("resume", "dora", "looks stuck", "operator:dora"), ("cancel", "eve", "customer asked", "operator:eve")]
    assert "not FAILED" in refusals[0].detail["refused"] and "RUNNING" in refusals[1].detail["refused"]
    assert rt.store.load(saga_id).status.value == "COMPLETED"


def test_a_second_redrive_of_a_dead_letter_is_refused_and_recorded(rt: Runtime, clock: Clock,
                                                                   worker: Worker) -> None:
    saga_id = failed_on_compensating_a(worker, clock)
    [dl] = rt.store.dead_letters(saga_id=saga_id)
    switched_off.clear()
    redrive(dl.id, who="fay", reason="fixed")

    with pytest.raises(InvalidOperation, match="handled already"):
        redrive(dl.id, who="gus", reason="double click")

    [refusal] = [e for e in rt.store.get(saga_id).events if e.type == "OperatorActionRefused"]
    assert (refusal.detail["action"], refusal.detail["who"], refusal.detail["dead_letter"]) == ("redrive", "gus", dl.id)


PAIR = register_saga(Saga("inproc.pair", steps=[
    Parallel("both", [Step("left", action=act, compensation=undo, retry=POLICY, timeout=30),
                      Step("right", action=act, compensation=undo, retry=POLICY, timeout=30)]),
    Step("after", action=act, compensation=None, retry=POLICY, timeout=30),
]))


def test_a_group_whose_first_messages_were_lost_is_sent_again_whole_by_the_sweeper(rt: Runtime, clock: Clock,
                                                                                   worker: Worker) -> None:
    # Given a saga starting with a group, whose two first messages never reached the broker
    saga_id = start_saga("inproc.pair", {})
    assert [m.step for m in rt.dispatcher.take()] == ["left", "right"]  # type: ignore[attr-defined]
    deadline = rt.store.load(saga_id).step("left").deadline_at
    assert deadline is not None

    # When the sweeper passes their deadline
    report = sweep(rt, now=deadline + timedelta(seconds=1))

    # Then both are sent again (neither timed out), and the saga completes
    assert sorted(report.redispatched) == [f"{saga_id}:left", f"{saga_id}:right"] and report.timed_out == []
    worker.drain()
    assert rt.store.load(saga_id).status.value == "COMPLETED"


def test_a_lost_branch_message_times_out_that_branch_and_its_sibling_is_compensated(rt: Runtime, clock: Clock,
                                                                                   worker: Worker) -> None:
    # Given a group whose right branch's message is lost after the left one reported
    saga_id = start_saga("inproc.pair", {})
    left, _right = rt.dispatcher.take()  # type: ignore[attr-defined]
    worker.deliver(left)
    deadline = rt.store.load(saga_id).step("right").deadline_at
    assert deadline is not None

    report = sweep(rt, now=deadline + timedelta(seconds=1))
    worker.drain()

    # Then right is timed out (its effect unknown: compensated), and left is compensated too
    assert report.timed_out == [f"{saga_id}:right"]
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED"
    assert sorted(c for c in calls if c.startswith("compensation")) == ["compensation:left:1", "compensation:right:1"]


# ---------------------------------------------------------------- inline steps
# `handle_step` given an `InlineBudget`, as the Celery task gives it one: a follow-up on the same
# queue, due now, that ends before the handled message's hard limit, runs in this delivery instead
# of being published. Real workers run the same path in tests/servers/test_crash_safety.py (crashes between
# inline steps, an inline step's own time limit) and in `make bench`.

elsewhere = step_task("inproc.elsewhere", queue="inproc-other")(lambda ctx, data: {"step": ctx.step})

MIXED = register_saga(Saga("inproc.mixed", steps=[
    Step("a", action=act, compensation=undo, retry=POLICY, compensation_retry=POLICY, timeout=30),
    Step("b", action=act, compensation=undo, retry=POLICY, compensation_retry=POLICY, timeout=30),
    Step("other", action=elsewhere, compensation=None, retry=POLICY, timeout=30),
    Step("c", action=act, compensation=undo, retry=POLICY, compensation_retry=POLICY, timeout=30),
]))


class Monotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def deliver_inline(rt: Runtime, worker: Worker, budget: InlineBudget | None) -> list[str]:
    """Deliver the next recorded step message with `budget`; the steps then published."""
    m = worker.dispatcher.take()[0]
    assert m.task is not None and m.saga_id is not None and m.step is not None and m.task_id is not None
    st = step_tasks.get(m.task)
    assert st is not None
    handle_step(rt, st, m.saga_id, m.step, Delivery(m.task_id, kwargs=m.kwargs), inline=budget, **m.kwargs)
    return [s.step or "" for s in worker.dispatcher.sent if s.kind == "step"]


def test_consecutive_steps_on_one_queue_run_in_one_delivery(rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("inproc.line", {})
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc"}), None)) == []
    view = rt.store.get(saga_id)
    assert view.state == "COMPLETED"
    assert calls == ["action:a:1", "action:b:1", "action:c:1"]
    # each inline step was dispatched, and succeeded, in its own transition, under its own task id,
    # each recorded as made by the message being handled (a's): a redelivery of it finds its own commit
    dispatched = [e for e in view.events if e.type == "StepDispatched"]
    assert [e.step for e in dispatched] == ["a", "b", "c"]
    assert len({e.detail["task_id"] for e in dispatched}) == 3
    a_task = view.step("a").task_id
    assert [e.detail["by"] for e in view.events if e.type == "StepSucceeded"] == [a_task] * 3
    # and each saw the results before it, as a published step does
    assert view.step("c").result == {"step": "c", "saw": ["a", "b"]}


def test_a_step_on_another_queue_is_published_and_the_line_goes_on_inline_after_it(rt: Runtime,
                                                                                   worker: Worker) -> None:
    saga_id = start_saga("inproc.mixed", {})
    # a and b run here; `other` is on another queue: published
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc"}), None)) == ["other"]
    assert calls == ["action:a:1", "action:b:1"]
    # the worker of that queue runs it; c is on the first queue again: published to its workers
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc-other"}), None)) == ["c"]
    assert rt.store.get(saga_id).step("c").status == "RUNNING"
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc"}), None)) == []
    assert rt.store.get(saga_id).state == "COMPLETED"


def test_a_step_on_another_queue_this_worker_consumes_runs_inline_too(rt: Runtime, worker: Worker) -> None:
    # Given a worker consuming both queues of the saga (a, b and c on "inproc", `other` on "inproc-other")
    saga_id = start_saga("inproc.mixed", {})
    # When a's message is delivered: the whole line runs in its delivery, nothing is published
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc", "inproc-other"}), None)) == []
    view = rt.store.get(saga_id)
    assert view.state == "COMPLETED"
    assert calls == ["action:a:1", "action:b:1", "action:c:1"]
    # `other` was a step of its own: dispatched under its own task id, recorded as made by a's message
    assert view.step("other").result == {"step": "other"}
    a_task = view.step("a").task_id
    assert [e.detail["by"] for e in view.events if e.type == "StepSucceeded"] == [a_task] * 4
    assert len({e.detail["task_id"] for e in view.events if e.type == "StepDispatched"}) == 4


def test_the_queues_a_worker_consumes_are_its_consumer_selection() -> None:
    from celery import Celery
    from kombu import Queue

    from workflows.orchestration.inline import consumed_queues

    app = Celery("inline-queues", set_as_current=False)
    app.conf.task_queues = [Queue(name) for name in ("saga", "inventory", "payment", "shipping")]
    # without -Q a worker consumes every declared queue
    assert consumed_queues(app, "inventory") == {"saga", "inventory", "payment", "shipping"}
    # `-Q inventory,payment` (what `celery worker` does with it): only those; shipping's pool is elsewhere
    app.amqp.queues.select(["inventory", "payment"])
    assert consumed_queues(app, "inventory") == {"inventory", "payment"}
    # and a message taken from a queue outside the selection still counts its own queue
    assert consumed_queues(app, "crash") == {"inventory", "payment", "crash"}


def test_without_a_budget_every_step_is_published(rt: Runtime, worker: Worker) -> None:
    start_saga("inproc.line", {})
    assert deliver_inline(rt, worker, None) == ["b"]


def test_a_budget_runs_at_most_max_steps_inline(rt: Runtime, worker: Worker) -> None:
    start_saga("inproc.line", {})
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc"}), None, max_steps=1)) == ["c"]
    assert calls == ["action:a:1", "action:b:1"]


def test_a_step_whose_limit_ends_after_the_messages_hard_limit_is_published(rt: Runtime,
                                                                            worker: Worker) -> None:
    start_saga("inproc.line", {})
    mono = Monotonic()
    # the handled message is killed 20 s from now; b's limit is 30 s: b may not run here
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc"}), mono.t + 20, clock=mono)) == ["b"]
    calls.clear()
    mono.t += 100
    # 30 s + margin fit
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc"}), mono.t + 31 + 1, clock=mono)) == []
    assert calls == ["action:b:1", "action:c:1"]


def test_a_retry_with_a_countdown_is_published_not_run_inline(rt: Runtime, worker: Worker) -> None:
    start_saga("inproc.line", {"behaviour": {"b": {"fail_times": 1}}})
    published = deliver_inline(rt, worker, InlineBudget(frozenset({"inproc"}), None))
    assert published == ["b"]
    m = worker.dispatcher.sent[-1]
    assert m.eta is not None  # b's second attempt waits for its countdown in the broker
    assert calls == ["action:a:1", "action:b:1"]


def test_compensations_on_the_same_queue_run_inline_too(rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("inproc.line", {"behaviour": {"c": {"fail": "permanent"}}})
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc"}), None)) == []
    assert rt.store.get(saga_id).state == "COMPENSATED"
    assert calls == ["action:a:1", "action:b:1", "action:c:1", "compensation:a:1"]


def test_a_budget_of_no_steps_publishes_as_before(rt: Runtime, worker: Worker) -> None:
    start_saga("inproc.line", {})
    assert deliver_inline(rt, worker, InlineBudget(frozenset({"inproc"}), None, max_steps=0)) == ["b"]


# ------------------------------------------------------------------ workers lost


class WorkerDied(BaseException):
    """Stands for the pool process ending inside the step function (os._exit, a segfault, the OOM
    killer): nothing after it runs, nothing is reported; the broker redelivers the message."""


def dies(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    calls.append(f"{ctx.kind}:{ctx.step}:{ctx.attempt}")
    if f"{ctx.kind}:{ctx.step}" in switched_off:
        raise WorkerDied(ctx.step)
    return {"step": ctx.step}


die = step_task("inproc.die", queue="inproc")(dies)
DIES = register_saga(Saga("inproc.dies", steps=[
    Step("a", action=act, compensation=undo, retry=POLICY, compensation_retry=POLICY, timeout=30),
    Step("b", action=die, compensation=die, retry=POLICY, compensation_retry=POLICY, timeout=30),
    Step("c", action=act, compensation=None, retry=POLICY, timeout=30),
]))


def step_b_message(worker: Worker) -> Sent:
    """Deliver step a's message; return step b's, not delivered."""
    [a] = worker.dispatcher.take()
    worker.deliver(a)
    [b] = worker.dispatcher.take()
    assert b.step == "b"
    return b


def crash_loop(worker: Worker, m: Sent, times: int) -> None:
    """Deliver `m` as the broker does when each delivery's worker dies: first fresh, then redelivered."""
    for k in range(times):
        try:
            worker.deliver(m, redelivered=k > 0)
        except WorkerDied:
            continue


def test_a_step_that_kills_its_worker_every_time_runs_max_attempts_times_then_is_dead_lettered_and_compensated(
        rt: Runtime, worker: Worker) -> None:
    # Given step b's function ends its worker on every delivery (policy: 3 attempts)
    switched_off.add("action:b")
    saga_id = start_saga("inproc.dies", {})
    m = step_b_message(worker)

    # When the broker keeps redelivering it (each redelivery counted before the function runs)
    crash_loop(worker, m, times=4)
    worker.drain()

    # Then it ran 3 times; the 4th delivery (3 workers lost) ran nothing and gave the step up
    assert calls == ["action:a:1", "action:b:1", "action:b:1", "action:b:1", "compensation:b:1",
                     "compensation:a:1"]
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED" and view.step("b").status == "COMPENSATED"  # compensated as unknown
    assert view.step("b").redeliveries == 3 and view.step("b").attempts == 1
    [lost] = [e for e in view.events if e.type == "StepWorkerLost"]
    assert (lost.step, lost.detail["losses"]) == ("b", 3)
    assert "worker lost 3 times, its effect is unknown" in (view.failure_reason or "")
    assert [e.detail["redeliveries"] for e in view.events if e.type == "StepRedelivered"] == [1, 2, 3]
    [dl] = view.dead_letters
    assert (dl.step, dl.kind, dl.exception, dl.task_name) == ("b", "action", "WorkerLost: worker lost 3 times",
                                                              "inproc.die")
    assert dl.kwargs["attempt"] == 1 and dl.headers["task_id"] == m.task_id  # the message, kept for a redrive
    # b's compensation runs (its effect is unknown), then a's, newest first
    assert view.step("a").status == "COMPENSATED" and "StepWorkerLost" in view.event_types("b")
    assert calls.count("compensation:b:1") == 1

    # And one more copy of it (the 4th delivery's worker died after its commit) runs nothing again
    worker.deliver(m, redelivered=True)
    worker.drain()
    assert calls.count("action:b:1") == 3 and rt.store.get(saga_id).step("b").redeliveries == 3


def test_a_redelivered_step_that_then_succeeds_keeps_its_count(rt: Runtime, worker: Worker) -> None:
    # Given step b's worker dies once, then the function works
    switched_off.add("action:b")
    saga_id = start_saga("inproc.dies", {})
    m = step_b_message(worker)
    crash_loop(worker, m, times=1)
    switched_off.discard("action:b")

    # When it is redelivered
    worker.deliver(m, redelivered=True)
    worker.drain()

    # Then it ran twice, the run completed, and the one redelivery is on the record
    view = rt.store.get(saga_id)
    assert view.state == "COMPLETED" and calls.count("action:b:1") == 2
    assert (view.step("b").attempts, view.step("b").redeliveries) == (1, 1)
    assert view.event_types("b") == ["StepDispatched", "StepRedelivered", "StepSucceeded"]


def test_a_compensation_that_kills_its_worker_every_time_fails_the_saga_for_an_operator(
        rt: Runtime, clock: Clock, worker: Worker) -> None:
    # Given step c fails for good after b succeeded, and b's compensation kills its worker every time
    saga_id = start_saga("inproc.dies", {"behaviour": {"c": {"fail": "permanent"}}})
    switched_off.add("compensation:b")
    worker.deliver(step_b_message(worker))  # b succeeds
    [c] = worker.dispatcher.take()
    worker.deliver(c)  # c fails for good: b's compensation is sent
    [m] = worker.dispatcher.take()
    assert (m.step, m.command.kind if m.command else None) == ("b", "compensation")

    crash_loop(worker, m, times=4)

    view = rt.store.get(saga_id)
    assert view.state == "FAILED" and view.step("b").status == "COMPENSATION_FAILED"
    assert view.step("b").compensation_redeliveries == 3 and view.step("b").redeliveries == 0
    assert calls.count("compensation:b:1") == 3 and "compensation:a:1" not in calls
    assert [(d.kind, d.exception) for d in view.dead_letters] == [("compensation", "WorkerLost: worker lost 3 times")]
    assert "worker lost 3 times" in (view.failure_reason or "")


def test_the_step_message_schema_names_each_problem() -> None:
    from workflows.orchestration.message import parse_step_message

    ok = parse_step_message(("s-1", "a"), {"saga": "inproc.line", "kind": "action", "version": 2, "input": {},
                                           "attempt": 1, "results": {}})
    assert not isinstance(ok, str) and ok.handle_kwargs() == {
        "saga": "inproc.line", "kind": "action", "version": 2, "input": {}, "attempt": 1, "results": {},
        "result": None, "saga_version": None, "handoffs": 0}  # a message without a saga version: an older release
    assert "2 positional arguments" in str(parse_step_message(("s-1",), {}))
    wrong = parse_step_message(("s-1", "a"), {"saga": "x", "kind": "action", "version": "2", "input": [],
                                              "surprise": 1})
    assert isinstance(wrong, str)
    for problem in ("version: Input should be a valid integer", "input: Input should be a valid dictionary",
                    "surprise: Extra inputs are not permitted"):
        assert problem in wrong, wrong


def test_the_chaos_invariants_accept_a_step_given_up_after_its_workers_died(rt: Runtime, worker: Worker) -> None:
    """bench/chaos.py kills pools every few seconds: a step can lose its worker max_attempts times."""
    from bench.chaos_invariants import _check_compensated_only_what_may_have_happened, _check_dead_letters

    switched_off.add("action:b")
    saga_id = start_saga("inproc.dies", {})
    crash_loop(worker, step_b_message(worker), times=4)
    worker.drain()
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED" and len(view.dead_letters) == 1
    saga = {"state": view.state, "steps": {s.name: s for s in view.steps}, "events": view.events,
            "dead_letters": view.dead_letters}
    assert _check_compensated_only_what_may_have_happened(view.events) == []
    assert _check_dead_letters(saga, DIES) == []


# ------------------------------------------------------------------ a runtime with no Celery app sweeps


INPROC_SHOP = Choreography("inproc_shop", completed={"OrderShipped"}, events={"OrderShipped"})
INPROC_SHOP.service("warehouse").subscribe("OrderPlaced", lambda ctx, event: None)


def test_a_runtime_without_a_celery_app_sweeps_what_it_can_and_leaves_events_and_unknown_runs_alone(
        rt: Runtime, worker: Worker, clock: Clock) -> None:
    # Given an event this runtime could not send (no Celery app: a clear error, its row kept unsent)
    with pytest.raises(NoPublisher, match="no Celery app"):
        INPROC_SHOP.start("OrderPlaced", {"order_id": "o-1"})
    [unsent] = rt.store.unsent_outbox(created_up_to=clock.now + timedelta(days=1))
    # and a choreographed saga whose first event was sent (by a process that could) and never handled
    with pytest.raises(NoPublisher):
        INPROC_SHOP.start("OrderPlaced", {"order_id": "o-2"})
    [sent] = [r for r in rt.store.unsent_outbox(created_up_to=clock.now + timedelta(days=1)) if r.id != unsent.id]
    rt.store.mark_outbox_sent([sent.id], clock.now)
    # and a run whose step is due, of a saga type this process does not know
    gone = start_saga("inproc.line", {})
    rt.dispatcher.take()  # type: ignore[attr-defined]  (its message was lost)
    later = start_saga("inproc.line", {}, countdown=60)  # and a scheduled one, due by then
    with create_engine(rt.settings.resolved_database_url()).begin() as c:
        c.execute(text("UPDATE sagas SET saga_type = 'inproc.gone' WHERE id IN (:a, :b)"), {"a": gone, "b": later})
    # and a run it knows, its first message lost too
    known = start_saga("inproc.line", {})
    rt.dispatcher.take()  # type: ignore[attr-defined]

    # When it sweeps far in the future, Then the run it knows is handled, the other left to a
    # sweeper that knows it, and the event left to one that can send it; nothing raised
    report = sweep(rt, now=clock.now + timedelta(days=30))
    assert report.redispatched == [f"{known}:a"]
    assert sent.saga_id in report.stuck  # reported stuck; its delivery is not sent again from here
    assert report.started == [] and rt.store.get(later).state == "SCHEDULED"
    assert rt.store.get(gone).step("a").status == "RUNNING"
    assert [r.id for r in rt.store.unsent_outbox(created_up_to=clock.now + timedelta(days=60))] == [unsent.id]


def test_copies_of_a_redelivered_message_count_its_inline_follow_up_lost_once(rt: Runtime, worker: Worker) -> None:
    # Given a's message committed a and dispatched b on its own queue (to run inline), and its worker
    # died there, before b ran: nothing was published
    saga_id = start_saga("inproc.line", {})
    [m] = worker.dispatcher.take()
    worker.deliver(m)  # without a budget b is published; the crash is: that publish never happened
    [b] = worker.dispatcher.take()
    assert b.step == "b"

    # When the broker hands out that message three times more (kombu's Redis transport can give
    # both the message requeued on the worker's loss and its unacked entry restored later)
    for _ in range(3):
        worker.deliver(m, redelivered=True)

    # Then b's loss (it would have run inline in that delivery) is counted once, not once a copy:
    # b is re-published, never given up (3 attempts allowed), and runs once
    view = rt.store.get(saga_id)
    assert view.step("b").redeliveries == 1 and view.step("b").status == "RUNNING"
    assert [e.detail["redeliveries"] for e in view.events if e.type == "StepRedelivered"] == [1]
    sent = worker.dispatcher.take()
    assert {s.step for s in sent} == {"b"} and {s.task_id for s in sent} == {b.task_id}
    worker.deliver(sent[0])
    worker.drain()
    assert rt.store.get(saga_id).state == "COMPLETED" and calls.count("action:b:1") == 1
