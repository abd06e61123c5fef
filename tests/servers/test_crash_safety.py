"""Crash safety: duplicates, a crash between commit and publish, killed workers, races, idempotent start.

Real Redis, real PostgreSQL (and SQLite for the race), real prefork workers in subprocesses. The
crash.chain saga runs on the queue "crash" that only the workers started here consume, and the
tests start its runs themselves, so they know which worker handles which message.
"""
from __future__ import annotations

import os
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from tests.support.workers import WorkerProcess, worker_env
from sqlalchemy import func, select

from tasks.common import transaction
from tasks.inventory import available
from tasks.models import Notification, Payment, Reservation, Shipment
from tests.support import crash_sagas
from tests.support.crash_sagas import applied, calls, deliveries
from tests.support.interfaces import wait_until
from tests.support.sagas import r
from workflows import IdempotencyConflict, get_runtime, get_saga, registry, start_saga, wait_for
from workflows.core.state import ActionFailed, ActionSucceeded, ActionTimedOut, ErrorInfo
from workflows.operations.sweeper import sweep
from workflows.store.models import EventRow, SagaRow
from tests.support.runs import apply, create_run, publish_command
from workflows.store import SagaStore, open_store

EXTRA_MODULES = "tests.support.sagas,tests.support.crash_sagas"
ORDER_QUEUES = "saga,inventory,payment,shipping,notification"
VISIBILITY = "5"


@pytest.fixture
def workers(app):  # type: ignore[no-untyped-def]
    """Start workers of our own (killed at the end): workers(name, queues, concurrency, **env)."""
    started: list[WorkerProcess] = []

    def start(name: str, queues: str = crash_sagas.QUEUE, concurrency: int = 1, **env: str) -> WorkerProcess:
        env.setdefault("SAGA_REDIS_VISIBILITY_TIMEOUT", VISIBILITY)
        # short on purpose (a killed worker's message is back in 5 s); these steps take well under it
        env.setdefault("SAGA_REDIS_VISIBILITY_CHECK", "0")
        w = WorkerProcess(f"{name}-{uuid.uuid4().hex[:6]}", queues, concurrency,
                          env=worker_env(SAGA_EXTRA_MODULES=EXTRA_MODULES, **env))
        started.append(w)
        w.wait_ready(app)
        return w

    yield start
    for w in started:
        w.kill()


INLINE = pytest.mark.parametrize("inline", [False, True], ids=["published", "inline"])
"""The crash.chain steps share one queue: with inline steps on (the default) a worker runs b and c in
the delivery of a's message; off, each step is a message of its own."""


def begin(saga_name: str, data: dict) -> tuple[str, object, object]:  # type: ignore[type-arg]
    """Record a run and its start in the test process; return (id, run, first step's command).

    The test publishes the command itself (once, or twice), instead of `start_saga`.
    """
    rt = get_runtime()
    definition = registry.get(saga_name)
    created = create_run(rt.store, definition, definition.validate_input(data), timing=rt.timing)
    assert created.state is not None and created.command is not None
    return created.saga_id, created.state, created.command


def history(view, type_: str, step: str | None = None) -> list:  # type: ignore[no-untyped-def,type-arg]
    return [e for e in view.events if e.type == type_ and (step is None or e.step == step)]


def step_counts(view, type_: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {s.name: len(history(view, type_, s.name)) for s in view.steps}


# ---------------------------------------------------------------- duplicate delivery


@INLINE
def test_a_duplicated_step_message_runs_the_step_once_and_publishes_its_follow_up_once(workers, inline):  # type: ignore[no-untyped-def]
    # Given one worker taking one message at a time: the duplicate is handled right after the
    # original committed and published the next step (or ran it inline), before that step ran.
    w = workers("dup", concurrency=1, SAGA_INLINE_STEPS=str(inline).lower())
    saga_id, run, cmd = begin("crash.chain", {})

    # When the first step's message is published twice (same task id, same arguments)
    publish_command(get_runtime(), run, cmd)
    publish_command(get_runtime(), run, cmd)
    view = wait_for(saga_id, timeout=30)
    _drain(w)

    # Then the step ran once, the run advanced once per step, and the follow-up was not duplicated
    assert view.state == "COMPLETED"
    assert calls(saga_id) == ["action:a:1", "action:b:1", "action:c:1"]
    # inline: b and c ran in the delivery of a's first copy, so the broker delivered only a, twice
    assert deliveries(saga_id) == (["action:a", "action:a"] if inline else
                                   ["action:a", "action:a", "action:b", "action:c"])
    assert step_counts(view, "StepSucceeded") == {"a": 1, "b": 1, "c": 1}
    # the duplicate's note: inline, it is handled after the run completed, so read it after the drain;
    # held longer than the 5 s visibility timeout it comes back marked redelivered, and then it is
    # noted as a follow-up re-published, of nothing
    view = get_saga(saga_id)
    ignored = history(view, "DuplicateIgnored", "a") + history(view, "StaleMessageIgnored", "a")
    republished = [e for e in history(view, "FollowUpRepublished", "a") if e.detail["steps"] == []]
    assert [e.detail["by"] for e in ignored + republished] == [cmd.task_id]
    assert not [e for e in history(view, "FollowUpRepublished") if e.detail["steps"]]  # nothing sent twice


def test_a_duplicated_order_step_takes_effect_once(workers, order_factory):  # type: ignore[no-untyped-def]
    # Given workers of the order services taking two messages at a time (the copies may race)
    workers("orders", ORDER_QUEUES, concurrency=2)
    order = order_factory()
    sku = order["items"][0]["sku"]
    saga_id, run, cmd = begin("order_fulfillment", order)

    # When the reservation message is delivered twice
    publish_command(get_runtime(), run, cmd)
    publish_command(get_runtime(), run, cmd)
    view = wait_for(saga_id, timeout=30)

    # Then each service's effect exists once and stock moved once
    assert view.state == "COMPLETED"
    with transaction() as s:
        for model in (Reservation, Payment, Shipment, Notification):
            assert s.scalar(select(func.count()).select_from(model).where(model.saga_id == saga_id)) == 1
    assert available(sku) == 8
    assert set(step_counts(view, "StepSucceeded").values()) == {1}
    assert set(step_counts(view, "StepDispatched").values()) == {1}


# ---------------------------------------------------------------- crash between commit and publish


@INLINE
def test_a_pool_process_dying_after_its_commit_is_recovered_by_the_redelivery(workers, inline):  # type: ignore[no-untyped-def]
    # Given a worker whose pool process dies right after committing step b, before publishing c
    # (or, inline, before running c: b ran in the delivery of a's message)
    workers("crash-child", concurrency=1, SAGA_TEST_CRASH_AFTER_COMMIT="b", SAGA_INLINE_STEPS=str(inline).lower())
    saga_id, run, cmd = begin("crash.chain", {})

    publish_command(get_runtime(), run, cmd)
    view = wait_for(saga_id, timeout=30)

    # Then reject_on_worker_lost requeued the message being handled (b's, or inline a's); the
    # redelivery found its own commit, ran neither a nor b again, and published c
    assert view.state == "COMPLETED"
    assert calls(saga_id) == ["action:a:1", "action:b:1", "action:c:1"]
    handled = "a" if inline else "b"
    republished = history(view, "FollowUpRepublished")
    assert [(e.step, e.detail["by"], e.detail["steps"]) for e in republished] == [
        (handled, view.step(handled).task_id, ["c"])]
    assert step_counts(view, "StepSucceeded") == {"a": 1, "b": 1, "c": 1}


# ---------------------------------------------------------------- inline across the queues a worker consumes


def test_a_worker_consuming_both_queues_runs_the_other_queues_step_inline(workers):  # type: ignore[no-untyped-def]
    # Given one worker consuming both queues of crash.two_queues (a and c on "crash", b on "crash-other")
    workers("two-q", f"{crash_sagas.QUEUE},{crash_sagas.OTHER_QUEUE}", concurrency=1)
    saga_id, run, cmd = begin("crash.two_queues", {})

    publish_command(get_runtime(), run, cmd)
    view = wait_for(saga_id, timeout=30)

    # Then b and c ran in the delivery of a's message: the broker delivered only a
    assert view.state == "COMPLETED"
    assert calls(saga_id) == ["action:a:1", "action:b:1", "action:c:1"]
    assert deliveries(saga_id) == ["action:a"]
    # each in its own transition, under its own task id, recorded as made by a's message
    dispatched = history(view, "StepDispatched")
    assert [e.step for e in dispatched] == ["a", "b", "c"] and len({e.detail["task_id"] for e in dispatched}) == 3
    assert [e.detail["by"] for e in history(view, "StepSucceeded")] == [cmd.task_id] * 3


def test_a_step_on_a_queue_the_worker_does_not_consume_goes_to_its_own_pool(workers):  # type: ignore[no-untyped-def]
    # Given a pool per queue: one worker consumes "crash", another only "crash-other"
    workers("pool-crash", crash_sagas.QUEUE, concurrency=1)
    workers("pool-other", crash_sagas.OTHER_QUEUE, concurrency=1)
    saga_id, run, cmd = begin("crash.two_queues", {})

    publish_command(get_runtime(), run, cmd)
    view = wait_for(saga_id, timeout=30)

    # Then b was published to its queue's pool, and c back to "crash": every step is a message
    assert view.state == "COMPLETED"
    assert calls(saga_id) == ["action:a:1", "action:b:1", "action:c:1"]
    assert deliveries(saga_id) == ["action:a", "action:b", "action:c"]
    assert [e.detail["by"] for e in history(view, "StepSucceeded")] == [view.step(s).task_id for s in "abc"]


def test_a_pool_process_dying_after_an_inline_step_of_another_queue_is_recovered(workers):  # type: ignore[no-untyped-def]
    # Given a worker consuming both queues whose pool process dies right after committing b (run
    # inline, from the other queue, in the delivery of a's message), before running c
    workers("two-q-crash", f"{crash_sagas.QUEUE},{crash_sagas.OTHER_QUEUE}", concurrency=1,
            SAGA_TEST_CRASH_AFTER_COMMIT="b")
    saga_id, run, cmd = begin("crash.two_queues", {})

    publish_command(get_runtime(), run, cmd)
    view = wait_for(saga_id, timeout=30)

    # Then a's message was requeued; its redelivery found its own commit, ran neither a nor b
    # again, and published c; every effect once
    assert view.state == "COMPLETED"
    assert calls(saga_id) == ["action:a:1", "action:b:1", "action:c:1"]
    republished = history(view, "FollowUpRepublished")
    assert [(e.step, e.detail["by"], e.detail["steps"]) for e in republished] == [("a", cmd.task_id, ["c"])]
    assert step_counts(view, "StepSucceeded") == {"a": 1, "b": 1, "c": 1}
    assert [applied(saga_id, s) for s in "abc"] == [1, 1, 1]


def test_a_pool_process_dying_between_its_commit_and_the_read_model_update_is_repaired_by_the_sweeper(workers):  # type: ignore[no-untyped-def]
    # Given a worker with the Redis read model on, whose pool process dies right after committing
    # the last step (the run COMPLETED in the database), before anything after the commit ran
    from workflows.projections.setup import from_settings
    from workflows.runtime.settings import Settings

    read_model = os.environ["TEST_REDIS_URL"]
    workers("crash-hash", concurrency=1, SAGA_TEST_CRASH_AFTER_COMMIT="c", SAGA_INLINE_STEPS="false",
            SAGA_REDIS_READ_MODEL_URL=read_model)
    saga_id, run, cmd = begin("crash.chain", {})
    publish_command(get_runtime(), run, cmd)
    assert wait_for(saga_id, timeout=30).state == "COMPLETED"

    # Then the hash shows the run as the last update that went out left it: behind the database
    hash_of = lambda: {k.decode(): v.decode() for k, v in r().hgetall(f"saga:{saga_id}").items()}  # noqa: E731
    assert hash_of()["state"] == "RUNNING" and hash_of()["step"] == "c"

    # When the sweeper (configured with the read model too) runs once the grace has passed
    rt = get_runtime()
    before = rt._projections
    rt._projections = from_settings(Settings(redis_read_model_url=read_model))
    try:
        report = sweep(rt, now=datetime.now(timezone.utc) + timedelta(seconds=rt.settings.projection_grace + 1))
    finally:
        rt.projections.close()
        rt._projections = before

    # Then the read model caught up: COMPLETED, at the run's version in the database
    version = rt.store.load(saga_id).version
    assert f"redis-hash:{saga_id}:{version}" in report.projections_sent
    assert hash_of()["state"] == "COMPLETED" and hash_of()["run_version"] == str(version)


@pytest.mark.parametrize("last", ["b1", "b2"])
def test_a_pool_process_dying_after_a_branch_commit_is_recovered_by_the_redelivery(workers, last):  # type: ignore[no-untyped-def]
    # Given a worker whose pool process dies right after committing branch b2 of a parallel pair,
    # b2 finishing last (its commit dispatches c) or first (its commit dispatches nothing)
    workers("crash-branch", concurrency=2, SAGA_TEST_CRASH_AFTER_COMMIT="b2")
    saga_id, run, cmd = begin("crash.branches", {"sleep": {last: 1.0}})  # the other one commits first

    publish_command(get_runtime(), run, cmd)
    view = wait_for(saga_id, timeout=40)

    # Then the redelivery found its own commit and ran nothing twice; it re-published exactly what
    # its transition dispatched: c when b2 was last, nothing when b1 was still running
    assert view.state == "COMPLETED", view.failure_reason
    assert [applied(saga_id, s) for s in ("a", "b1", "b2", "c")] == [1, 1, 1, 1]
    assert sorted(calls(saga_id)) == ["action:a:1", "action:b1:1", "action:b2:1", "action:c:1"]
    republished = history(view, "FollowUpRepublished", "b2")
    if last == "b2":
        # the first copy redelivered re-published c. kombu's Redis transport can hand out a second
        # copy (the message requeued on the worker's loss, and its unacked entry restored after the
        # visibility timeout): it finds its own commit too, and re-publishes at most c again (a
        # duplicate of c that c's guard drops: every step ran once, above)
        steps = [r.detail["steps"] for r in republished]
        assert steps[0] == ["c"] and all(s in (["c"], []) for s in steps[1:]), steps
    else:
        # b2's transition dispatched nothing: redelivered before b1's commit it finds its own commit and
        # sends nothing (noted as republished or as a duplicate, by whether the broker marked it
        # redelivered); after b1's commit it is stale. Either way nothing was sent twice.
        # (the saga can complete before that redelivery arrives: wait for it)
        notes = wait_until(lambda: [e for e in get_saga(saga_id).events if e.step == "b2" and e.type in (
            "FollowUpRepublished", "DuplicateIgnored", "StaleMessageIgnored")], 30, "b2 was never redelivered")
        assert len(notes) == 1, notes
        assert all(e.detail.get("steps", []) == [] for e in notes)
        assert [applied(saga_id, s) for s in ("a", "b1", "b2", "c")] == [1, 1, 1, 1]
        assert sorted(calls(saga_id)) == ["action:a:1", "action:b1:1", "action:b2:1", "action:c:1"]


@INLINE
def test_a_pool_process_dying_after_a_compensation_commit_is_recovered_by_the_redelivery(workers, inline):  # type: ignore[no-untyped-def]
    # Given a worker whose pool process dies right after each commit reporting on step b (its
    # action, then its compensation), before publishing (or running inline) what follows
    workers("crash-undo", concurrency=1, SAGA_TEST_CRASH_AFTER_COMMIT="b", SAGA_INLINE_STEPS=str(inline).lower())
    # and a run whose step c fails for good, so b and then a are compensated
    saga_id, run, cmd = begin("crash.chain", {"fail": ["c"]})

    publish_command(get_runtime(), run, cmd)
    view = wait_for(saga_id, timeout=30)

    # Then each redelivery found its own commit, did not run b's action or compensation again, and
    # published what followed: c after b's action, a's compensation after b's. The redelivered
    # messages are b's (published) or, inline, a's (b ran in its delivery) and c's (b's
    # compensation ran in the delivery of c's failing message)
    assert view.state == "COMPENSATED"
    assert calls(saga_id) == ["action:a:1", "action:b:1", "action:c:1", "compensation:b:1", "compensation:a:1"]
    republished = history(view, "FollowUpRepublished")
    assert [(e.step, e.detail["task"], e.detail["steps"]) for e in republished] == (
        [("a", "crash.action", ["c"]), ("c", "crash.compensate", ["a"])] if inline else
        [("b", "crash.action", ["c"]), ("b", "crash.compensate", ["a"])])
    assert [applied(saga_id, s) for s in "abc"] == [1, 1, 0]
    assert [int(r().get(f"applied:{saga_id}:{s}:undo") or 0) for s in "ab"] == [1, 1]
    assert step_counts(view, "StepCompensated") == {"a": 1, "b": 1, "c": 0}


@INLINE
def test_a_worker_killed_after_its_commit_is_recovered_after_the_visibility_timeout(workers, inline):  # type: ignore[no-untyped-def]
    # Given a worker that is killed whole (no parent left to requeue) right after committing step b
    doomed = workers("crash-worker", concurrency=1, SAGA_TEST_CRASH_AFTER_COMMIT="b:worker",
                     SAGA_INLINE_STEPS=str(inline).lower())
    saga_id, run, cmd = begin("crash.chain", {})
    publish_command(get_runtime(), run, cmd)
    wait_until(lambda: doomed.proc.poll() is not None, 30, "the worker did not die at its crash point")

    # When another worker comes up (the unacked message is restored after the visibility timeout)
    workers("survivor", concurrency=1)
    view = wait_for(saga_id, timeout=60)

    # Then the saga completed, with each step run once
    assert view.state == "COMPLETED"
    assert calls(saga_id) == ["action:a:1", "action:b:1", "action:c:1"]
    assert [e.step for e in history(view, "FollowUpRepublished")] == ["a" if inline else "b"]
    assert [applied(saga_id, s) for s in "abc"] == [1, 1, 1]


def test_a_worker_killed_in_the_middle_of_a_step_is_redelivered_and_the_effect_happens_once(workers):  # type: ignore[no-untyped-def]
    # Given a worker running a step that takes a while
    victim = workers("victim", concurrency=1)
    saga_id, run, cmd = begin("crash.chain", {"sleep": {"b": 4}})
    publish_command(get_runtime(), run, cmd)
    wait_until(lambda: "action:b:1" in calls(saga_id), 30, "step b never started")

    # When the worker is SIGKILLed mid-step and another one takes over
    victim.kill()
    workers("heir", concurrency=1)
    view = wait_for(saga_id, timeout=60)

    # Then b ran again from the redelivered message, and every effect happened once
    assert view.state == "COMPLETED"
    assert calls(saga_id).count("action:b:1") == 2
    assert [applied(saga_id, s) for s in "abc"] == [1, 1, 1]
    assert step_counts(view, "StepSucceeded") == {"a": 1, "b": 1, "c": 1}


def test_an_inline_step_keeps_its_own_time_limit(workers):  # type: ignore[no-untyped-def]
    # Given a worker with inline steps (the default) and a run whose step b (time limit 1 s) sleeps 3 s
    workers("inline-limit", concurrency=1)
    saga_id, run, cmd = begin("crash.slow", {"sleep": {"b": 3}})

    publish_command(get_runtime(), run, cmd)
    view = wait_for(saga_id, timeout=30)

    # Then b ran inline, in the delivery of a's message, and was stopped at its own limit (not a's
    # 20 s): its effect never happened, it was compensated as unknown, and so was a, all in that
    # one delivery
    assert view.state == "COMPENSATED"
    assert "time limit of 1s" in (view.step("b").error or "")
    assert deliveries(saga_id) == ["action:a"]
    assert calls(saga_id) == ["action:a:1", "action:b:1", "compensation:b:1", "compensation:a:1"]
    assert [applied(saga_id, s) for s in "ab"] == [1, 0]


def _drain(w: WorkerProcess) -> None:
    """Wait until the crash queue is empty and `w` holds no message (nothing left to deliver)."""
    import redis

    broker = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])
    node = f"{w.name}@{os.uname().nodename}"

    def idle() -> bool:
        if broker.llen(crash_sagas.QUEUE):
            return False
        inspect = get_runtime().app.control.inspect(destination=[node], timeout=1.0)
        active, reserved = inspect.active() or {}, inspect.reserved() or {}
        return node in active and not active[node] and not reserved.get(node)

    wait_until(idle, 30, "the crash queue did not drain")


# ---------------------------------------------------------------- idempotent effects


ACTIONS = [("reserve_inventory", "inventory", "tasks.inventory", "reserve_items"),
           ("process_payment", "payment", "tasks.payment", "charge_payment"),
           ("create_shipment", "shipping", "tasks.shipping", "create_shipment"),
           ("send_confirmation", "notification", "tasks.notification", "send_confirmation")]


@pytest.mark.parametrize("step,service,module,fn", ACTIONS, ids=[a[0] for a in ACTIONS])
def test_a_repeated_action_replays_its_effect_even_when_the_service_now_fails(app, order_factory, step, service,
                                                                               module, fn):  # type: ignore[no-untyped-def]
    # A worker died after the service committed the effect, before the saga recorded it; the
    # redelivered message calls the service again, which meanwhile fails for good. Reporting that
    # failure would leave the step FAILED, never compensated, its effect (a charge) standing.
    import importlib

    from tasks.common import arm_fault
    from workflows import StepContext

    action = getattr(importlib.import_module(module), fn)
    order = order_factory()
    saga_id = str(uuid.uuid4())
    ctx = StepContext(saga_id=saga_id, saga_type="order_fulfillment", step=step, kind="action", attempt=1,
                      task_id="t1", input=order)
    first = action(ctx, order)

    arm_fault(service, times=1, permanent=True, message="down for good")
    again = action(ctx, order)

    assert again == first
    with transaction() as s:
        for model in (Reservation, Payment, Shipment, Notification):
            n = s.scalar(select(func.count()).select_from(model).where(model.saga_id == saga_id))
            assert n == (1 if model.__tablename__.startswith(service[:4]) else 0)
    assert available(order["items"][0]["sku"]) == (8 if service == "inventory" else 10)


# ---------------------------------------------------------------- two workers racing


@pytest.fixture(params=["postgresql", "sqlite"])
def race_store(request, tmp_path):  # type: ignore[no-untyped-def]
    from workflows.store.db import migrate

    if request.param == "postgresql":
        request.getfixturevalue("database")
        return open_store(os.environ["TEST_PG_URL"])
    url = f"sqlite:///{tmp_path / 'race.db'}"
    migrate(url)
    return open_store(url)


def test_two_workers_reporting_the_same_step_at_once_advance_the_run_once(race_store):  # type: ignore[no-untyped-def]
    chain = crash_sagas.chain
    outcomes = [ActionSucceeded("a", {"n": 1}), ActionFailed("a", ErrorInfo("Boom", "flaky"), True, 0.0),
                ActionTimedOut("a", "lost"), ActionSucceeded("a", {"n": 2})]
    ids: list[str] = []
    for _ in range(8):
        created = create_run(race_store, chain, {})
        assert created.state is not None
        saga_id, version = created.saga_id, created.state.version
        ids.append(saga_id)
        barrier = threading.Barrier(len(outcomes))
        results: list = [None] * len(outcomes)  # type: ignore[type-arg]

        def report(i: int) -> None:  # (B023: the threads are joined before the loop rebinds what they read)
            barrier.wait()  # noqa: B023
            results[i] = apply(race_store, chain, saga_id, outcomes[i], by=f"worker-{i}", expected_version=version,  # noqa: B023
                                          now=datetime.now(timezone.utc))

        threads = [threading.Thread(target=report, args=(i,)) for i in range(len(outcomes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        winners = [i for i, r in enumerate(results) if r.transition is not None]
        assert len(winners) == 1
        assert all(r.stale and not r.own_commit for r in results if r.transition is None)
        run = race_store.load(saga_id)
        assert run.version == version + 1
        assert run.caused_by == f"worker-{winners[0]}"
        a = run.step("a")
        assert a.attempts == 1
        assert a.status.value == {0: "SUCCEEDED", 1: "RUNNING", 2: "COMPENSATING", 3: "SUCCEEDED"}[winners[0]]
        with race_store.sessions() as s:
            stale = s.scalar(select(func.count()).select_from(EventRow).where(
                EventRow.saga_id == saga_id, EventRow.type == "StaleMessageIgnored"))
        assert stale == len(outcomes) - 1
    _forget(race_store, ids)  # runs without messages: leave nothing for later sweeps


def _forget(store: SagaStore, ids: list[str]) -> None:
    from sqlalchemy import delete

    with store.sessions.begin() as s:
        s.execute(delete(EventRow).where(EventRow.saga_id.in_(ids)))
        s.execute(delete(SagaRow).where(SagaRow.id.in_(ids)))


# ---------------------------------------------------------------- a lost first message


def test_a_lost_first_step_is_sent_again_once_then_timed_out(app, monkeypatch):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from workflows.operations.sweeper import sweep
    from workflows.runtime.dispatch import RecordingDispatcher

    rt = get_runtime()
    recorder = RecordingDispatcher()
    monkeypatch.setattr(rt, "_dispatcher", recorder)  # what the sweeper publishes is recorded, not sent

    def sent() -> list[tuple[str | None, str | None, str, int, str | None]]:
        return [(m.saga_id, m.step, m.command.kind, m.command.version, m.task_id)
                for m in recorder.steps() if m.command is not None]

    # Given a run whose first message was never published (and whose re-sent one is lost too)
    saga_id, run, cmd = begin("crash.chain", {})
    ours = lambda keys: [k for k in keys if k.startswith(saga_id)]  # noqa: E731 (other tests' leftovers)

    # When the sweeper passes step a's deadline: a new message for step a, under a new version
    first = sweep(rt, now=run.step("a").deadline_at + timedelta(seconds=1))
    assert ours(first.redispatched) == [f"{saga_id}:a"] and ours(first.timed_out) == []
    again = rt.store.load(saga_id)
    assert again.version == run.version + 1 and again.caused_by == "sweeper"
    assert [m for m in sent() if m[0] == saga_id] == [(saga_id, "a", "action", again.version, again.step("a").task_id)]
    assert again.step("a").task_id != cmd.task_id

    # When that message is lost as well: the second deadline times the step out (compensated),
    # as for any later step; the sweeper sends a first step again only once
    second = sweep(rt, now=again.step("a").deadline_at + timedelta(seconds=1))
    assert ours(second.redispatched) == [] and ours(second.timed_out) == [f"{saga_id}:a"]
    final = rt.store.load(saga_id)
    assert final.status.value == "COMPENSATING" and final.step("a").attempts == 1
    assert final.step("a").status.value == "COMPENSATING"  # timed out: its effect is unknown, so undone
    assert [m[1:3] for m in sent() if m[0] == saga_id] == [("a", "action"), ("a", "compensation")]
    assert [e.type for e in rt.store.get(saga_id).events if e.step == "a"] == [
        "StepDispatched", "StepRedispatched", "StepDispatched", "StepTimedOut", "CompensationDispatched"]
    _forget(rt.store, [saga_id])


def test_the_original_first_message_arriving_after_a_redispatch_is_stale(workers, monkeypatch):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from workflows.operations.sweeper import sweep

    # Given a run whose first message was only slow: the sweeper sent step a again meanwhile
    rt = get_runtime()
    saga_id, run, cmd = begin("crash.chain", {})
    report = sweep(rt, now=run.step("a").deadline_at + timedelta(seconds=1))
    assert f"{saga_id}:a" in report.redispatched

    # When a worker starts, and the original message arrives too
    workers("late-first", concurrency=1)
    publish_command(rt, run, cmd)
    view = wait_for(saga_id, timeout=30)

    # Then the saga completed with each effect applied once, and the original message, delivered
    # too, was recognised as stale (its version is older than the redispatch's)
    assert view.state == "COMPLETED"
    assert [applied(saga_id, step) for step in "abc"] == [1, 1, 1]
    wait_until(lambda: deliveries(saga_id).count("action:a") == 2, 30, "the original message never arrived")
    wait_until(lambda: history(rt.store.get(saga_id), "StaleMessageIgnored", "a"), 10, "no stale message noted")
    view = rt.store.get(saga_id)
    assert view.step("a").attempts == 1 and len(history(view, "StepSucceeded", "a")) == 1


# ---------------------------------------------------------------- idempotent start


def _rows_with_key(key: str) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    with get_runtime().store.sessions() as s:
        return [(r.id, r.input) for r in s.scalars(select(SagaRow).where(SagaRow.idempotency_key == key))]


def test_starting_twice_with_one_key_runs_one_saga(workers, order_factory):  # type: ignore[no-untyped-def]
    workers("starts", ORDER_QUEUES, concurrency=2)
    order = order_factory()
    key = f"order-{order['order_id']}"

    # When the same request arrives twice in a row, then six times at once
    first = start_saga("order_fulfillment", order, idempotency_key=key)
    second = start_saga("order_fulfillment", dict(order), idempotency_key=key)
    ids: list[str] = []
    barrier = threading.Barrier(6)

    def again() -> None:
        barrier.wait()
        ids.append(start_saga("order_fulfillment", order, idempotency_key=key))

    threads = [threading.Thread(target=again) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then every call returned the same saga, which ran once
    assert second == first and ids == [first] * 6
    assert [i for i, _ in _rows_with_key(key)] == [first]
    view = wait_for(first, timeout=30)
    assert view.state == "COMPLETED"
    assert len(history(view, "SagaCreated")) == 1 and len(history(view, "SagaStarted")) == 1
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(Payment).where(Payment.saga_id == first)) == 1


def test_one_key_with_another_payload_is_refused_and_writes_nothing(app, order_factory):  # type: ignore[no-untyped-def]
    from workflows.store import input_hash

    order = order_factory()
    key = f"order-{order['order_id']}"
    first = start_saga("order_fulfillment", order, idempotency_key=key)
    changed = {**order, "items": [{**order["items"][0], "quantity": 3}]}

    with pytest.raises(IdempotencyConflict) as err:
        start_saga("order_fulfillment", changed, idempotency_key=key)
    assert err.value.saga_id == first and key in str(err.value)
    with pytest.raises(IdempotencyConflict):
        start_saga("crash.chain", order, idempotency_key=key)  # same key, another saga type

    # (the first run may be progressing meanwhile: look for what the refused calls would have written)
    refused = [input_hash("order_fulfillment", registry.get("order_fulfillment").validate_input(changed)),
               input_hash("crash.chain", order)]
    with get_runtime().store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(SagaRow).where(SagaRow.input_hash.in_(refused))) == 0
        created = s.scalars(select(EventRow.saga_id).where(EventRow.type == "SagaCreated",
                                                           EventRow.detail["idempotency_key"].as_string() == key))
        assert list(created) == [first]
    assert [i for i, _ in _rows_with_key(key)] == [first]
    assert get_runtime().store.get(first).input["items"][0]["quantity"] == 2
