"""The store contract: one suite every implementation passes, against each real backend (the
recorder's here, the other store interfaces' in tests/servers/test_store_interfaces.py).

`open_store(url)` picks the implementation: `SQLiteStore`, and `PostgresStore` through psycopg 3 (the
recommended driver) and psycopg2. Transitions are decided by the runtime's decision loop with a
`RecordingDispatcher` (nothing is published), as in a worker."""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.support.interfaces import saga_count
from tests.support.runs import apply, create_run
from tests.support.stores import BACKENDS, open_backend
from workflows import IdempotencyConflict, InvalidInput, RetryPolicy, Saga, SagaNotFound, Step, UnknownSaga
from workflows.core.definition import Child, child_id
from workflows.core.state import ActionSucceeded, Started
from workflows.store.models import EventRow, SagaRow, StepRow
from workflows.store import PostgresStore, SagaStore
from workflows.store.sql import SqlStore

SAGA = Saga("store_suite", steps=[Step("a", action="x.a", compensation="x.undo_a"),
                                  Step("b", action="x.b", compensation=None)])


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path: Path) -> SagaStore:  # type: ignore[no-untyped-def]
    """SQLite, and PostgreSQL through psycopg 3 (the recommended driver) and psycopg2 (also supported)."""
    return open_backend(request, tmp_path)


def counts(store: SagaStore, saga_id: str) -> tuple[int, int, int]:
    with store.sessions() as s:
        return (s.scalar(select(func.count()).select_from(SagaRow).where(SagaRow.id == saga_id)) or 0,
                s.scalar(select(func.count()).select_from(StepRow).where(StepRow.saga_id == saga_id)) or 0,
                s.scalar(select(func.count()).select_from(EventRow).where(EventRow.saga_id == saga_id)) or 0)


def test_a_run_is_written_started_with_all_its_steps_and_its_history_at_once(store: SagaStore) -> None:
    run = create_run(store, SAGA, {"n": 1})
    assert run.created and run.state is not None and run.command is not None
    saga_id = run.saga_id
    assert counts(store, saga_id) == (1, 2, 3)
    view = store.get(saga_id)
    # step a is dispatched in the same transaction: the caller publishes exactly that command
    assert view.state == "RUNNING" and [s.status for s in view.steps] == ["RUNNING", "PENDING"]
    assert view.event_types() == ["SagaCreated", "SagaStarted", "StepDispatched"]
    assert view.version == run.state.version == run.command.version
    assert view.step("a").task_id == run.command.task_id and view.step("a").deadline_at is not None
    assert view.step("a").started_at is not None and view.step("b").started_at is None
    assert (run.command.step, run.command.kind, run.command.task) == ("a", "action", SAGA.steps[0].action_name)
    assert store.load(saga_id) == run.state


def test_idempotency_key_returns_the_same_run_or_refuses_other_content(store: SagaStore) -> None:
    key = f"k-{uuid.uuid4()}"
    first = create_run(store, SAGA, {"n": 1}, idempotency_key=key)
    again = create_run(store, SAGA, {"n": 1}, idempotency_key=key)
    assert first.created and not again.created and again.saga_id == first.saga_id
    assert again.command is None  # nothing to publish: the first call did
    with pytest.raises(IdempotencyConflict, match=key):
        create_run(store, SAGA, {"n": 2}, idempotency_key=key)
    with store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(SagaRow).where(SagaRow.idempotency_key == key)) == 1


def test_a_stale_message_changes_nothing_and_is_noted(store: SagaStore) -> None:
    started = create_run(store, SAGA, {})
    assert started.state is not None
    saga_id, v = started.saga_id, started.state.version
    done = apply(store, SAGA, saga_id, ActionSucceeded("a", {"r": 1}), by="t-a", expected_version=v)
    assert done.transition is not None

    replay = apply(store, SAGA, saga_id, ActionSucceeded("a", {"r": 2}), by="t-other", expected_version=v)

    assert replay.stale and not replay.own_commit and replay.transition is None
    assert store.get(saga_id).step("a").result == {"r": 1}
    assert store.get(saga_id).event_types()[-1] == "StaleMessageIgnored"
    # the same message redelivered after its own commit knows it, to re-publish its follow-up
    own = apply(store, SAGA, saga_id, ActionSucceeded("a", {"r": 1}), by="t-a", expected_version=v)
    assert own.stale and own.own_commit


def test_two_writers_racing_on_one_version_make_exactly_one_transition(store: SagaStore) -> None:
    started = create_run(store, SAGA, {})
    assert started.state is not None
    saga_id, v = started.saga_id, started.state.version
    results = []
    barrier = threading.Barrier(4)

    def report(n: int) -> None:
        barrier.wait()
        results.append(apply(store, SAGA, saga_id, ActionSucceeded("a", {"writer": n}), by=f"w{n}",
                                   expected_version=v))

    threads = [threading.Thread(target=report, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(r.transition is not None for r in results) == 1
    assert sum(r.stale for r in results) == 3
    view = store.get(saga_id)
    assert view.version == v + 1 and view.event_types().count("StepSucceeded") == 1


def test_a_transition_decided_on_an_outdated_snapshot_writes_nothing_and_is_decided_again(store: SagaStore) -> None:
    from workflows.core.state import Cancel

    # Given two callers that read the run at the same version, and the first one's write landed
    run = create_run(store, SAGA, {})
    assert run.state is not None
    snapshot = run.state
    first = apply(store, SAGA, run.saga_id, ActionSucceeded("a", {}), by="w1", expected_version=snapshot.version,
                        state=snapshot)
    assert first.transition is not None

    # When the second writes what it decided on the same, now outdated, snapshot
    late = apply(store, SAGA, run.saga_id, ActionSucceeded("a", {"other": 1}), by="w2",
                       expected_version=snapshot.version, state=snapshot)
    cancel = apply(store, SAGA, run.saga_id, Cancel("ops", "ops"), by="operator:ops", state=snapshot)

    # Then the version check refused both writes: the report read again and found itself stale,
    # and the cancel read again and was decided on step b, which the first write had dispatched
    assert late.transition is None and late.stale and not late.own_commit
    assert cancel.transition is not None and cancel.transition.before.version == snapshot.version + 1
    final = store.load(run.saga_id)
    assert final.step("a").result == {} and final.step("b").status.value == "TIMED_OUT"
    assert final.version == snapshot.version + 2
    assert store.get(run.saga_id).event_types().count("StaleMessageIgnored") == 1


def test_an_operator_cancel_racing_a_step_report_decides_on_what_the_report_wrote(store: SagaStore) -> None:
    from workflows.core.state import Cancel

    # Given a cancel (no expected version: an operator's) and step a's success racing, many times
    for _ in range(12):
        run = create_run(store, SAGA, {})
        assert run.state is not None
        barrier = threading.Barrier(2)

        # (B023: both threads are joined before the loop rebinds `run` and `barrier`)
        def report() -> None:
            barrier.wait()  # noqa: B023
            apply(store, SAGA, run.saga_id, ActionSucceeded("a", {}), by="w", expected_version=run.state.version)  # noqa: B023

        def cancel() -> None:
            barrier.wait()  # noqa: B023
            apply(store, SAGA, run.saga_id, Cancel("race", "ops"), by="operator:ops")  # noqa: B023

        threads = [threading.Thread(target=report), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        # Then whichever came second saw the first's steps: the cancel never leaves a step
        # dispatched by the report RUNNING (uncompensated, its result ignored) in a compensating run
        # (report first: b was dispatched, so the cancel times it out; cancel first: b never ran)
        final = store.load(run.saga_id)
        statuses = [s.status.value for s in final.steps]
        assert final.status.value == "COMPENSATING" and "RUNNING" not in statuses, final.steps
        assert (statuses, final.version - run.state.version) in (
            (["COMPENSATING", "TIMED_OUT"], 2), (["COMPENSATING", "PENDING"], 1)), final.steps


COMPENSATED_LATE = Saga("store_suite_3", steps=[
    Step("a", action="x.a", compensation="x.undo_a"), Step("b", action="x.b", compensation=None),
    Step("c", action="x.c", compensation="x.undo_c")])


def _written(store: SagaStore, saga_id: str) -> tuple[object, ...]:
    """What a run's rows say, without what differs between two runs by nature (ids, times, task ids)."""
    view = store.get(saga_id)
    steps = [(s.name, s.status, s.attempts, s.compensation_attempts, s.result, s.error,
              s.started_at is not None, s.finished_at is not None, s.compensated_at is not None,
              s.deadline_at is not None, s.task_id is not None) for s in view.steps]
    varying = ("task_id", "deadline_at", "eta", "idempotency_key")
    events = [(e.type, e.step, e.attempt, {k: v for k, v in e.detail.items() if k not in varying})
              for e in view.events]
    return view.state, view.version, view.failure_reason, view.idempotency_key is not None, steps, events


def test_the_one_statement_creation_and_transition_write_what_the_transactional_ones_write(database) -> None:  # type: ignore[no-untyped-def]
    from workflows.core.state import ActionFailed, CompensationSucceeded, ErrorInfo

    # Given the same outcomes (success, retry, failure, compensation) reported to two runs, one
    # written by PostgreSQL's one-statement transition and one by the transaction SQLite uses
    outcomes = [ActionSucceeded("a", {"r": [1, "x"]}), ActionSucceeded("b", {}),
                ActionFailed("c", ErrorInfo("Boom", "try again"), True, 0.5),
                ActionFailed("c", ErrorInfo("Boom", "no"), False), CompensationSucceeded("a")]
    from sqlalchemy import event

    from workflows.store.db import get_engine, statement_engine

    written, statements, created = [], [], []
    sent: list[str] = []
    listener = lambda conn, cursor, statement, *a: sent.append(statement)  # noqa: E731
    from workflows.store._driver import STATEMENT_LISTENERS

    STATEMENT_LISTENERS.append(sent.append)  # the hot path's statements, on the driver's cursor
    engines = {get_engine(database), statement_engine(database)}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", listener)
    try:
        for single in (True, False):
            store = PostgresStore(database) if single else SqlStore(database)
            sent.clear()
            run = create_run(store, COMPENSATED_LATE, {"n": 1}, idempotency_key=f"same-rows-{uuid.uuid4()}")
            assert run.state is not None
            created.append(len(sent))
            version = run.state.version
            sent.clear()
            for o in outcomes:
                applied = apply(store, COMPENSATED_LATE, run.saga_id, o, by="t", expected_version=version)
                assert applied.transition is not None, o
                version = applied.state.version
            statements.append(len(sent))
            written.append(_written(store, run.saga_id))
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", listener)
        STATEMENT_LISTENERS.remove(sent.append)

    # Then both runs hold the same rows; the first was created by one statement and took one
    # read and one write per transition
    assert written[0][0] == "COMPENSATED" and written[0][3] and len(written[0][5]) > 10
    assert written[0] == written[1]
    assert created[0] == 1 and created[1] >= 3
    assert statements[0] == 2 * len(outcomes) and statements[1] > 4 * len(outcomes)


def test_an_explicit_saga_id_cannot_be_used_twice(store: SagaStore) -> None:
    from workflows.core.errors import SagaIdTaken

    saga_id = f"mine-{uuid.uuid4()}"
    create_run(store, SAGA, {}, saga_id=saga_id)
    with pytest.raises(SagaIdTaken, match=saga_id):
        create_run(store, SAGA, {"other": True}, saga_id=saga_id)
    assert counts(store, saga_id) == (1, 2, 3)


def test_unknown_saga_id_is_not_found(store: SagaStore) -> None:
    with pytest.raises(SagaNotFound):
        store.get("nope")
    with pytest.raises(SagaNotFound):
        apply(store, SAGA, "nope", Started(), by="x")
    with pytest.raises(SagaNotFound):
        store.load("nope")


# ----------------------------------------------------------- refused at the door (client)


def test_invalid_input_unknown_saga_and_conflicts_write_nothing(app, order_factory) -> None:  # type: ignore[no-untyped-def]
    from workflows import start_saga

    before = saga_count()
    bad = order_factory()
    bad["items"][0]["quantity"] = 0
    del bad["payment"]
    with pytest.raises(InvalidInput) as info:
        start_saga("order_fulfillment", bad)
    assert "items.0.quantity" in str(info.value) and "payment" in str(info.value)
    with pytest.raises(UnknownSaga, match="no_such_saga"):
        start_saga("no_such_saga", {})
    with pytest.raises(InvalidInput, match="JSON object"):
        start_saga("tests.three", ["not", "an", "object"])
    assert saga_count() == before


def test_a_transition_writes_its_dead_letters_unsent_and_a_taken_closure_refuses_all_of_it(store: SagaStore) -> None:
    from datetime import datetime, timezone

    from workflows.core.errors import DeadLetterHandled
    from workflows.core.state import ActionFailed, DeadLetterClosure, ErrorInfo, Resume

    # Given a run whose step a ran out of retries: one transition with a dead letter among its rows
    SHORT = Saga("store_suite_dl", steps=[Step("a", action="x.a", compensation="x.undo_a"),
                                          Step("b", action="x.b", compensation=None,
                                               retry=RetryPolicy(max_attempts=1))])
    run = create_run(store, SHORT, {})
    assert run.state is not None
    done = apply(store, SHORT, run.saga_id, ActionSucceeded("a", {}), by="t", expected_version=run.state.version)
    failed = apply(store, SHORT, run.saga_id, ActionFailed("b", ErrorInfo("Boom", "no"), True), by="t",
                   expected_version=done.state.version)
    assert failed.transition is not None
    [dl] = failed.transition.dead_letters
    # Then it was committed with the run, its broker copy not yet sent
    later = datetime.now(timezone.utc).replace(year=2100)
    assert [d.id for d in store.unsent_dead_letters(later)] == [dl.id]
    assert store.dead_letter(dl.id).status == "OPEN"
    store.mark_dead_letters_sent([dl.id], datetime.now(timezone.utc))
    assert store.unsent_dead_letters(later) == []

    # When a transition closes a dead letter that is no longer OPEN
    assert store.discard_dead_letter(dl.id, resolution="done", event=None, now=datetime.now(timezone.utc))
    before = store.load(run.saga_id)
    t = failed.transition
    from workflows.core.engine import decide

    retried = decide(SHORT, before, Resume("a", "", "ops"), datetime.now(timezone.utc), lambda: "0" * 32)
    with pytest.raises(DeadLetterHandled):
        store.commit(retried.closing(DeadLetterClosure("REDRIVEN", "late", dead_letter_id=dl.id)), by="ops",
                     now=datetime.now(timezone.utc))

    # Then nothing of it was written: the run is at the same version, the dead letter as it was
    assert store.load(run.saga_id) == before and t.after.version == before.version
    assert store.dead_letter(dl.id).status == "DISCARDED"


def test_prune_deletes_only_runs_that_ended_before_the_cutoff_with_all_their_rows(store: SagaStore) -> None:
    from datetime import datetime, timedelta, timezone

    from workflows.core.state import ActionFailed, ErrorInfo

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    SHORT = Saga("store_suite_prune", steps=[Step("a", action="x.a", compensation="x.undo_a"),
                                             Step("b", action="x.b", compensation=None,
                                                  retry=RetryPolicy(max_attempts=1))])

    def completed(at: datetime) -> str:
        run = create_run(store, SAGA, {"at": at.isoformat()}, now=at)
        assert run.state is not None
        a = apply(store, SAGA, run.saga_id, ActionSucceeded("a", {}), by="t", now=at,
                  expected_version=run.state.version)
        apply(store, SAGA, run.saga_id, ActionSucceeded("b", {}), by="t", now=at, expected_version=a.state.version)
        assert store.get(run.saga_id).state == "COMPLETED"
        return run.saga_id

    # Given two runs that completed long ago, one that completed recently, one still running, and
    # one that ended long ago with an open dead letter (b ran out of retries; a compensated)
    old = [completed(t0), completed(t0 + timedelta(hours=1))]
    recent = completed(t0 + timedelta(days=40))
    running = create_run(store, SAGA, {"running": True}, now=t0).saga_id
    kept = create_run(store, SHORT, {}, now=t0)
    assert kept.state is not None
    a = apply(store, SHORT, kept.saga_id, ActionSucceeded("a", {}), by="t", now=t0, expected_version=kept.state.version)
    b = apply(store, SHORT, kept.saga_id, ActionFailed("b", ErrorInfo("Boom", "no"), True), by="t", now=t0,
              expected_version=a.state.version)
    from workflows.core.state import CompensationSucceeded

    apply(store, SHORT, kept.saga_id, CompensationSucceeded("a"), by="t", now=t0, expected_version=b.state.version)
    assert store.get(kept.saga_id).state == "COMPENSATED" and store.dead_letters(saga_id=kept.saga_id)

    # When runs that ended over 30 days before day 41 are pruned, one per batch
    cutoff = t0 + timedelta(days=41) - timedelta(days=30)
    assert store.prune(cutoff, limit=1) == 1
    assert store.prune(cutoff, limit=10) == 1
    assert store.prune(cutoff, limit=10) == 0

    # Then the two old completed runs are gone with every row; the others are whole
    for saga_id in old:
        assert counts(store, saga_id) == (0, 0, 0)
        with pytest.raises(SagaNotFound):
            store.get(saga_id)
    for saga_id in (recent, running, kept.saga_id):
        assert counts(store, saga_id)[0] == 1 and counts(store, saga_id)[2] > 0


KID_SAGA = Saga("store_suite.kid", steps=[Step("k", action="x.k", compensation="x.undo_k")])
WITH_CHILD = Saga("store_suite.parent", steps=[Step("a", action="x.a", compensation=None),
                                               Child("kid", saga=KID_SAGA)])


def test_a_transition_that_starts_a_child_writes_the_child_with_it_or_neither(store: SagaStore) -> None:
    from dataclasses import replace

    from workflows.core.errors import ConcurrentTransition

    # Given a parent whose step a succeeds: its transition carries the child's creation
    run = create_run(store, WITH_CHILD, {"n": 1})
    assert run.state is not None
    kid_id = child_id(run.saga_id, "kid")
    applied = apply(store, WITH_CHILD, run.saga_id, ActionSucceeded("a", {}), by="worker")
    assert applied.transition is not None and len(applied.transition.children) == 1

    # Then both runs are there, the child naming its parent, its first step dispatched
    kid = store.load(kid_id)
    assert (kid.parent_id, kid.parent_step, kid.caused_by) == (run.saga_id, "kid", "start")
    assert kid.step("k").status.value == "RUNNING" and counts(store, kid_id) == (1, 1, 3)
    assert [c.id for c in store.get(run.saga_id).children] == [kid_id]
    assert store.get(kid_id).parent_id == run.saga_id

    # A writer that lost the race for the parent's version (the same transition, decided on the
    # version already written) writes no child either
    t = applied.transition
    late = replace(t, children=tuple(replace(c, after=replace(c.after, saga_id="never-written")) for c in t.children))
    with pytest.raises(ConcurrentTransition):
        store.commit(late, by="late", now=datetime.now(timezone.utc))
    assert counts(store, "never-written") == (0, 0, 0)


def test_a_child_as_the_first_stage_is_created_with_its_parents_run(store: SagaStore) -> None:
    first = Saga("store_suite.first", steps=[Child("kid", saga=KID_SAGA)])
    run = create_run(store, first, {"n": 3})
    assert run.created and store.load(child_id(run.saga_id, "kid")).parent_id == run.saga_id


def test_a_redelivery_is_counted_with_its_history_row_only_while_its_message_is_the_one_in_flight(
        store: SagaStore) -> None:
    """`count_redelivery`: one counter per kind, a `StepRedelivered` row each, atomically; nothing
    for a message its step no longer waits on; and no transition writes the counter back."""
    run = create_run(store, SAGA, {"n": 1})
    assert run.command is not None
    saga_id, task_id = run.saga_id, run.command.task_id
    now = store.get(saga_id).created_at
    assert store.count_redelivery(saga_id, "a", "action", task_id, 1, by=task_id, now=now) == 1
    assert store.count_redelivery(saga_id, "a", "action", task_id, 1, by=task_id, now=now) == 2
    # another task id, another attempt, the compensation's counter, an unknown kind: not this message
    assert store.count_redelivery(saga_id, "a", "action", "someone-else", 1, by="x", now=now) is None
    assert store.count_redelivery(saga_id, "a", "action", task_id, 2, by=task_id, now=now) is None
    assert store.count_redelivery(saga_id, "a", "compensation", task_id, 1, by=task_id, now=now) is None
    with pytest.raises(ValueError, match="kind"):
        store.count_redelivery(saga_id, "a", "event", task_id, 1, by=task_id, now=now)
    view = store.get(saga_id)
    assert (view.step("a").redeliveries, view.step("a").compensation_redeliveries) == (2, 0)
    rows = [e for e in view.events if e.type == "StepRedelivered"]
    assert [(e.step, e.attempt, e.detail["redeliveries"], e.detail["kind"], e.detail["task_id"], e.detail["by"])
            for e in rows] == [("a", 1, 1, "action", task_id, task_id), ("a", 1, 2, "action", task_id, task_id)]
    # the step's report (a transition decided on a snapshot read before the count) keeps the count
    assert run.state is not None
    apply(store, SAGA, saga_id, ActionSucceeded("a", {"ok": 1}), by=task_id, state=run.state)
    after = store.get(saga_id)
    assert after.step("a").status == "SUCCEEDED" and after.step("a").redeliveries == 2
    assert store.count_redelivery(saga_id, "a", "action", task_id, 1, by=task_id, now=now) is None


def test_a_first_only_redelivery_count_is_written_once(store: SagaStore) -> None:
    """`count_redelivery(first=True)`: counted only while the counter is 0 (the loss of an inline
    follow-up, which every copy of one redelivered message would count again); None after, with
    no history row."""
    run = create_run(store, SAGA, {"n": 1})
    assert run.command is not None
    saga_id, task_id = run.saga_id, run.command.task_id
    now = store.get(saga_id).created_at
    assert store.count_redelivery(saga_id, "a", "action", task_id, 1, by="m", now=now, first=True) == 1
    assert store.count_redelivery(saga_id, "a", "action", task_id, 1, by="m", now=now, first=True) is None
    assert store.count_redelivery(saga_id, "a", "action", task_id, 1, by=task_id, now=now) == 2  # its own copies
    assert store.count_redelivery(saga_id, "a", "action", task_id, 1, by="m", now=now, first=True) is None
    view = store.get(saga_id)
    assert view.step("a").redeliveries == 2
    assert [e.detail["redeliveries"] for e in view.events if e.type == "StepRedelivered"] == [1, 2]
