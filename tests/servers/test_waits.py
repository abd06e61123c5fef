"""Waits and signals through the store and the decision loop, in process, on SQLite and PostgreSQL.

The real store and loop; the dispatcher records what would be published and `Worker` (from the
in-process tier) delivers it to the step task's handler; the clock is the test's (`clock.advance`,
`sweep(now=...)`): nothing sleeps. The sagas are in tests/support/wait_sagas.py. Real workers,
the HTTP API and the CLI are in tests/servers/test_waits_workers.py.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

import tests.support.wait_sagas  # noqa: F401  (registers the sagas)
from tests.support.databases import own_pg_database, plain_engine
from workflows.testing import Clock, Worker
from workflows import start_saga
from workflows.core.errors import InvalidInput, NotWaiting, SagaError, SagaNotFound, SignalConflict
from workflows.operations.actions import cancel, resume
from workflows.operations.signals import signal
from workflows.operations.sweeper import sweep
from workflows.runtime.container import Runtime
from workflows.core.state import IdSource
from workflows.store.models import SignalRow

OK = {"approved": True, "reason": "within budget"}
NO = {"approved": False, "reason": "over budget"}


@pytest.fixture(params=["sqlite", "postgresql"])
def saga_database_url(request: pytest.FixtureRequest, saga_database_url: str) -> str:
    """The kit's fresh SQLite file, or this module's PostgreSQL database: a database of its own, as the
    sweeps at a far-future `now` would act on other modules' runs."""
    return saga_database_url if request.param == "sqlite" else str(request.getfixturevalue("waits_pg"))


@pytest.fixture
def saga_ids() -> IdSource:
    return lambda: uuid.uuid4().hex  # the PostgreSQL database is the module's: every test's ids unique in it


@pytest.fixture(scope="module")
def waits_pg() -> Iterator[str]:
    with own_pg_database("waits") as url:
        yield url


def parked(worker: Worker, saga: str = "tests.approval", data: dict[str, Any] | None = None) -> str:
    saga_id = start_saga(saga, data or {})
    worker.drain()
    return saga_id


def types(rt: Runtime, saga_id: str) -> list[str]:
    return rt.store.get(saga_id).event_types()


# ------------------------------------------------------------------ approve, reject


def test_a_run_parks_on_its_wait_with_no_message_in_flight_and_goes_on_when_approved(rt: Runtime,
                                                                                   worker: Worker) -> None:
    # Given an order whose reserve and charge succeeded: it waits for the manager, nothing published
    saga_id = parked(worker)
    view = rt.store.get(saga_id)
    assert view.state == "WAITING" and view.step("manager_approval").status == "WAITING"
    assert view.step("manager_approval").deadline_at == rt.clock() + timedelta(hours=1)
    assert rt.dispatcher.take() == []  # type: ignore[attr-defined]

    # When the manager approves
    answer = signal(saga_id, "approval", OK, idempotency_key="approval-1", who="alice")

    # Then the signal is recorded, consumed by the wait, and the saga goes on to completion; ship
    # sees the approval as the wait's result
    assert (answer.duplicate, answer.state, answer.signal.consumed_by, answer.signal.who) == (
        False, "RUNNING", "manager_approval", "alice")
    worker.drain()
    view = rt.store.get(saga_id)
    assert view.state == "COMPLETED"
    assert view.step("manager_approval").result == OK
    assert view.step("ship").result is not None and "manager_approval" in view.step("ship").result["saw"]
    assert [(s.name, s.consumed_by) for s in view.signals] == [("approval", "manager_approval")]
    assert "SignalReceived" in view.event_types() and "WaitApproved" in view.event_types()


def test_a_reject_compensates_exactly_the_completed_steps(rt: Runtime, worker: Worker) -> None:
    saga_id = parked(worker)
    signal(saga_id, "approval", NO, idempotency_key="approval-1", who="bob")
    worker.drain()
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED"
    assert view.failure_reason == "wait 'manager_approval' rejected by bob: over budget"
    assert [e.step for e in view.events if e.type == "StepCompensated"] == ["charge", "reserve"]
    assert view.step("ship").status == "PENDING" and view.step("manager_approval").status == "FAILED"


# ------------------------------------------------------------------ before, duplicates, refusals


def test_a_signal_before_its_wait_is_kept_and_consumed_when_the_wait_begins(rt: Runtime, worker: Worker) -> None:
    # Given a run whose first step is still in flight
    saga_id = start_saga("tests.approval", {})
    # When the approval arrives before the wait began
    early = signal(saga_id, "approval", OK, idempotency_key="early", who="alice")
    assert (early.state, early.signal.consumed_by) == ("RUNNING", None)
    assert rt.store.load(saga_id).signals[0].id == early.signal.id  # kept, on the run
    # Then the wait consumes it as it begins, and the saga completes without waiting
    worker.drain()
    view = rt.store.get(saga_id)
    assert view.state == "COMPLETED"
    assert [(s.consumed_by, s.consumed_at is not None) for s in view.signals] == [("manager_approval", True)]
    assert rt.store.load(saga_id).signals == ()
    assert view.event_types().index("SignalKept") < view.event_types().index("WaitStarted")


def test_a_duplicate_signal_is_a_no_op_and_the_same_key_with_another_payload_a_conflict(rt: Runtime,
                                                                                       worker: Worker) -> None:
    saga_id = parked(worker)
    first = signal(saga_id, "approval", OK, idempotency_key="k", who="alice")
    version = rt.store.load(saga_id).version
    again = signal(saga_id, "approval", OK, idempotency_key="k", who="alice")
    assert again.duplicate and again.signal.id == first.signal.id
    assert rt.store.load(saga_id).version == version
    with pytest.raises(SignalConflict, match="another payload"):
        signal(saga_id, "approval", NO, idempotency_key="k", who="alice")
    assert types(rt, saga_id).count("SignalReceived") == 1


def test_a_signal_the_run_does_not_wait_for_is_refused_and_changes_nothing(rt: Runtime, worker: Worker) -> None:
    saga_id = parked(worker)
    signal(saga_id, "approval", OK, idempotency_key="k1")
    worker.drain()
    before = rt.store.load(saga_id)
    with pytest.raises(NotWaiting, match="COMPLETED"):
        signal(saga_id, "approval", OK, idempotency_key="k2")
    with pytest.raises(NotWaiting, match="no wait for signal 'pickup'"):
        signal(saga_id, "pickup", {}, idempotency_key="k3")
    assert rt.store.load(saga_id) == before
    assert types(rt, saga_id).count("SignalRefused") == 2
    with pytest.raises(SagaNotFound):
        signal("no-such-saga", "approval", OK)


def test_a_payload_failing_the_model_is_refused_with_nothing_written(rt: Runtime, worker: Worker) -> None:
    saga_id = parked(worker)
    with pytest.raises(InvalidInput, match="approved") as e:
        signal(saga_id, "approval", {"approved": "maybe"}, idempotency_key="bad")
    assert e.value.errors and e.value.errors[0]["loc"] == ["approved"]
    assert rt.store.get(saga_id).signals == [] and rt.store.get(saga_id).state == "WAITING"
    with pytest.raises(SagaError, match="idempotency_key"):
        signal(saga_id, "approval", OK, idempotency_key="")


# ------------------------------------------------------------------ timeouts


def test_the_sweeper_times_out_a_due_wait_and_compensates(rt: Runtime, worker: Worker, clock: Clock) -> None:
    saga_id = parked(worker)
    # (on PostgreSQL the runs of the tests before are in the same tables: only this one is asserted on)
    assert f"{saga_id}:manager_approval" not in sweep(rt, now=clock.now + timedelta(minutes=59)).waits_timed_out
    report = sweep(rt, now=clock.now + timedelta(hours=1, seconds=1))
    assert f"{saga_id}:manager_approval" in report.waits_timed_out
    worker.drain()
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED" and "timed out" in (view.failure_reason or "")
    assert view.step("manager_approval").status == "TIMED_OUT"
    assert rt.store.waits_timed_out().get("tests.approval", 0) >= 1
    with pytest.raises(NotWaiting):  # the approval comes too late: refused, in the history
        signal(saga_id, "approval", OK, idempotency_key="late")


def test_a_timeout_racing_a_signal_only_one_wins_and_the_history_says_which(rt: Runtime, worker: Worker,
                                                                           clock: Clock) -> None:
    saga_id = parked(worker)
    clock.advance(3600 + 1)
    stale = rt.store.load(saga_id)  # the sweeper's read, before the signal commits
    signal(saga_id, "approval", OK, idempotency_key="just-in-time")
    from workflows.core.definition import registry
    from workflows.core.state import WaitTimedOut
    applied = rt.loop.apply(registry.get("tests.approval"), saga_id, WaitTimedOut("manager_approval"),
                            by="sweeper:wait", expected_version=stale.version, state=stale)
    assert applied.transition is None and applied.stale
    worker.drain()
    view = rt.store.get(saga_id)
    assert view.state == "COMPLETED"
    assert "WaitApproved" in view.event_types() and "WaitTimedOut" not in view.event_types()
    assert "StaleMessageIgnored" in view.event_types()


def test_a_timeout_fails_to_an_operator_or_goes_on_with_a_default(rt: Runtime, worker: Worker, clock: Clock) -> None:
    failed = parked(worker, "tests.approval_or_operator")
    defaulted = parked(worker, "tests.pickup_or_default")
    sweep(rt, now=clock.now + timedelta(seconds=61))
    worker.drain()
    assert rt.store.get(failed).state == "FAILED"
    assert rt.store.get(defaulted).state == "COMPLETED"
    assert rt.store.get(defaulted).step("pickup").result == {"picked_up": False}
    resume(failed, reason="customer unreachable", who="ops")
    worker.drain()
    view = rt.store.get(failed)
    assert view.state == "COMPENSATED" and [e.step for e in view.events if e.type == "StepCompensated"] == ["reserve"]


def test_a_saga_deadline_compensates_a_parked_run_and_its_parallel_branches(rt: Runtime, worker: Worker,
                                                                           clock: Clock) -> None:
    saga_id = parked(worker, "tests.parked_deadline")
    assert rt.store.get(saga_id).state == "WAITING"
    report = sweep(rt, now=clock.now + timedelta(seconds=601))
    assert saga_id in report.cancelled
    worker.drain()
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED"
    assert sorted(e.step for e in view.events if e.type == "StepCompensated") == ["charge", "reserve"]
    assert view.step("manager_approval").status == "FAILED"


def test_an_operator_cancels_a_parked_run(rt: Runtime, worker: Worker) -> None:
    saga_id = parked(worker)
    cancel(saga_id, reason="customer asked", who="bob")
    worker.drain()
    assert rt.store.get(saga_id).state == "COMPENSATED"


# ------------------------------------------------------------------ scheduled starts


def test_a_scheduled_start_is_recorded_at_once_and_started_by_the_sweeper_when_due(rt: Runtime, worker: Worker,
                                                                                  clock: Clock) -> None:
    key = f"later-{uuid.uuid4().hex}"
    saga_id = start_saga("tests.approval", {}, idempotency_key=key, countdown=3600)
    assert rt.store.get(saga_id).state == "SCHEDULED" and rt.dispatcher.take() == []  # type: ignore[attr-defined]
    assert start_saga("tests.approval", {}, idempotency_key=key, countdown=60) == saga_id  # idempotent
    assert saga_id not in sweep(rt, now=clock.now + timedelta(minutes=59)).started
    assert saga_id in sweep(rt, now=clock.now + timedelta(hours=1)).started
    worker.drain()
    assert rt.store.get(saga_id).state == "WAITING"


def test_a_scheduled_start_can_be_cancelled_before_it_runs(rt: Runtime, worker: Worker, clock: Clock) -> None:
    saga_id = start_saga("tests.approval", {}, start_at=clock.now + timedelta(days=1))
    cancel(saga_id, reason="not needed", who="ops")
    assert rt.store.get(saga_id).state == "COMPENSATED"
    assert saga_id not in sweep(rt, now=clock.now + timedelta(days=2)).started
    with pytest.raises(SagaError, match="timezone-aware"):
        start_saga("tests.approval", {}, start_at=clock.now.replace(tzinfo=None))
    with pytest.raises(SagaError, match="countdown"):
        start_saga("tests.approval", {}, countdown=-1)
    now = start_saga("tests.approval", {}, countdown=0)  # a time already come: started at once
    assert rt.store.get(now).state == "RUNNING" and rt.dispatcher.take()  # type: ignore[attr-defined]


# ------------------------------------------------------------------ what is in the database


def test_signals_are_rows_with_who_key_and_consumer_and_the_run_counts_kept_ones(rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("tests.approval", {})
    signal(saga_id, "approval", OK, idempotency_key="row", who="carol")
    engine = plain_engine(rt.settings.resolved_database_url())
    with engine.connect() as c:
        pending = c.execute(text("SELECT signals_pending FROM sagas WHERE id = :id"), {"id": saga_id}).scalar()
        row = c.execute(select(SignalRow.name, SignalRow.who, SignalRow.idempotency_key, SignalRow.consumed_by)
                        .where(SignalRow.saga_id == saga_id)).one()
    assert pending == 1 and tuple(row) == ("approval", "carol", "row", None)
    worker.drain()
    with engine.connect() as c:
        assert c.execute(text("SELECT signals_pending FROM sagas WHERE id = :id"), {"id": saga_id}).scalar() == 0
        assert c.execute(select(func.count()).select_from(SignalRow).where(
            SignalRow.saga_id == saga_id, SignalRow.consumed_by == "manager_approval")).scalar() == 1
    engine.dispose()


# ------------------------------------------------------------------ races and lost publishes


def test_a_signal_whose_publish_was_lost_is_sent_again_by_the_sweeper_not_timed_out(rt: Runtime, worker: Worker,
                                                                                  clock: Clock) -> None:
    import kombu.exceptions

    saga_id = parked(worker)
    rt.dispatcher.fail = kombu.exceptions.OperationalError("broker down")  # type: ignore[attr-defined]
    answer = signal(saga_id, "approval", OK, idempotency_key="lost")  # recorded; the publish failed, logged
    rt.dispatcher.fail = None  # type: ignore[attr-defined]
    assert answer.state == "RUNNING" and rt.dispatcher.take() == []  # type: ignore[attr-defined]
    ship = rt.store.get(saga_id).step("ship")
    assert ship.status == "RUNNING" and ship.deadline_at is not None
    report = sweep(rt, now=ship.deadline_at + timedelta(seconds=1))
    assert f"{saga_id}:ship" in report.redispatched and f"{saga_id}:ship" not in report.timed_out
    worker.drain()
    assert rt.store.get(saga_id).state == "COMPLETED"


def test_the_same_signal_sent_by_four_callers_at_once_is_recorded_once(rt: Runtime, worker: Worker) -> None:
    from concurrent.futures import ThreadPoolExecutor

    saga_id = parked(worker)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: signal(saga_id, "approval", OK, idempotency_key="once", who="w"), range(4)))
    assert sorted(a.duplicate for a in answers) == [False, True, True, True]
    assert len({a.signal.id for a in answers}) == 1
    view = rt.store.get(saga_id)
    assert len(view.signals) == 1 and view.event_types().count("SignalReceived") == 1
    assert view.event_types().count("WaitApproved") == 1


def test_a_sweep_racing_a_signal_for_real_exactly_one_wins(rt: Runtime, worker: Worker, clock: Clock) -> None:
    """The sweeper and the signal in two threads at the wait's deadline, twelve times: each run has
    exactly one of WaitApproved and WaitTimedOut in its history, and the loser changed nothing."""
    from concurrent.futures import ThreadPoolExecutor

    outcomes = []
    for n in range(12):
        saga_id = parked(worker)
        due = clock.now + timedelta(hours=1, seconds=1)

        def send(saga_id: str = saga_id, n: int = n) -> str:
            try:
                signal(saga_id, "approval", OK, idempotency_key=f"race-{n}")
            except NotWaiting:
                return "refused"
            return "accepted"

        with ThreadPoolExecutor(2) as pool:
            swept = pool.submit(sweep, rt, due)
            sent = pool.submit(send)
            swept.result()
            verdict = sent.result()
        worker.drain()
        events = rt.store.get(saga_id).event_types()
        won = [t for t in ("WaitApproved", "WaitTimedOut") if t in events]
        assert len(won) == 1 and events.count(won[0]) == 1, events
        assert (verdict == "accepted") == (won == ["WaitApproved"]), (verdict, events)
        outcomes.append(won[0])
    assert set(outcomes) <= {"WaitApproved", "WaitTimedOut"}
