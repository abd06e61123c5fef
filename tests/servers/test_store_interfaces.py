"""The store's interfaces beside the recorder (tests/servers/test_store.py), each run against every backend.

Each test takes the store as the one Protocol it exercises (`workflows.store.base`): what the
API and the operators read (`Queries`, `DeadLetterDesk`), the console and the metrics
(`ConsoleQueries`, `Metrics`), the sweeper (`Sweeps`), versioned definitions (`WorkerVersions`),
the choreography's event log (`EventLog`), the caller's transaction (`CallerTransactions`) and the
notifications (`Notices`).
The module has a PostgreSQL database of its own (its runs are due, its dead letters unsent: the
shared database's sweeps and counts must not see them); each test names its own saga type and
reads only its runs."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.support.databases import own_pg_database
from tests.support.runs import apply, create_run
from tests.support.stores import BACKENDS, open_backend
from workflows import DeadLetterNotFound, IdempotencyConflict, Saga, Step, Wait
from workflows.core.state import ActionFailed, ActionSucceeded, DeadLetter, ErrorInfo, HistoryEvent
from workflows.store.base import (CallerTransactions, ConsoleQueries, DeadLetterDesk, EventLog, Metrics, Notices,
                                  Queries, Recorder, SagaStore, Sweeps, WorkerVersions)
from workflows.store.notifications import NewNotification
from workflows.store.db import get_engine
from workflows.store.records import (DeadLetterGroup, DeadLetterQuery, ParkedStep, RecordedDefinition, RunCounts,
                                     SagaQuery, VersionCount)

A = Step("a", action="x.a", compensation="x.undo_a")
B = Step("b", action="x.b", compensation=None)
MANY = 1_000_000
"""A limit that never cuts: the shared database holds the other tests' runs too."""


@pytest.fixture(scope="module")
def own_database() -> Iterator[str]:
    """This module's PostgreSQL database: its sweeps' due runs and unsent rows stay out of the shared one."""
    with own_pg_database("interfaces") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path: Path, own_database: str) -> SagaStore:  # type: ignore[no-untyped-def]
    return open_backend(request, tmp_path, own_database)


def saga(prefix: str, *nodes: Step | Wait, deadline: float | None = None) -> Saga:
    return Saga(f"{prefix}_{uuid.uuid4().hex[:10]}", steps=list(nodes) or [A, B], deadline=deadline)


def dead_letter(step: str, kind: str = "action") -> DeadLetter:
    return DeadLetter(id=uuid.uuid4().hex, kind=kind, step=step, task=f"x.{step}", attempts=3,
                      error=ErrorInfo("Boom", "no more retries"))


def add_dead_letter(store: Recorder, dl: DeadLetter, saga_id: str, at: datetime) -> None:
    """A dead letter of `saga_id`, its broker copy marked sent (as the decision loop does after publishing)."""
    store.add_dead_letter(dl, saga_id=saga_id, now=at)
    store.mark_dead_letters_sent([dl.id], at)


def now() -> datetime:
    return datetime.now(timezone.utc)


def test_queries_read_a_run_by_id_key_and_type(store: SagaStore) -> None:
    q: Queries = store
    s, key = saga("queries"), f"key-{uuid.uuid4()}"
    run = create_run(store, s, {"order_id": "o-1"}, idempotency_key=key)

    view = q.get(run.saga_id)
    assert (view.saga_type, [x.name for x in view.steps]) == (s.name, ["a", "b"])
    assert view.events[0].type == "SagaCreated" and view.events == list(q.history(run.saga_id))
    assert q.run_for_key(key, s.name, {"order_id": "o-1"}) == run.saga_id
    assert q.run_for_key(f"unused-{uuid.uuid4()}", s.name, {}) is None
    with pytest.raises(IdempotencyConflict):
        q.run_for_key(key, s.name, {"order_id": "o-2"})
    assert q.saga_type(run.saga_id) == s.name and q.saga_type("no-such-run") is None
    page, total = q.list(saga_type=s.name)
    assert total == 1 and [v.id for v in page] == [run.saga_id] and page[0].events == []
    assert q.list(saga_type=s.name, state="COMPLETED") == ([], 0)
    q.ping()


def test_the_dead_letter_desk_lists_and_discards_dead_letters(store: SagaStore) -> None:
    desk: DeadLetterDesk = store
    s = saga("desk")
    run = create_run(store, s, {"n": 1})
    first, second = dead_letter("a"), dead_letter("a")
    add_dead_letter(store, first, run.saga_id, now() - timedelta(seconds=5))
    add_dead_letter(store, second, run.saga_id, now())

    assert [d.id for d in desk.dead_letters(saga_id=run.saga_id)] == [second.id, first.id]  # newest first
    assert [d.id for d in desk.open_dead_letters_of(s.name, "a")] == [first.id, second.id]  # oldest first
    assert desk.dead_letter(first.id).status == "OPEN"
    event = HistoryEvent("DeadLetterDiscarded", "a", None, {"dead_letter": first.id})
    assert desk.discard_dead_letter(first.id, resolution="not needed", event=event, now=now()) is True
    assert desk.discard_dead_letter(first.id, resolution="again", event=None, now=now()) is False
    assert desk.dead_letter(first.id).status == "DISCARDED"
    assert [d.id for d in desk.dead_letters(saga_id=run.saga_id)] == [second.id]
    assert len(desk.dead_letters(status=None, saga_id=run.saga_id)) == 2
    assert "DeadLetterDiscarded" in [e.type for e in store.history(run.saga_id)]
    with pytest.raises(DeadLetterNotFound):
        desk.dead_letter("no-such-dead-letter")


def test_the_console_queries_filter_count_and_group(store: SagaStore) -> None:
    console: ConsoleQueries = store
    s = saga("console")
    one = create_run(store, s, {"order_id": f"o-{uuid.uuid4()}"})
    create_run(store, s, {"order_id": f"o-{uuid.uuid4()}"})
    dl = dead_letter("a")
    add_dead_letter(store, dl, one.saga_id, now())

    page = console.search_sagas(SagaQuery(saga_type=s.name))
    assert page.total == 2 and page.by_state == {"RUNNING": 2}
    found = console.search_sagas(SagaQuery(saga_type=s.name, search=store.get(one.saga_id).input["order_id"]))
    assert [x.id for x in found.items] == [one.saga_id]
    with_dls = console.search_sagas(SagaQuery(saga_type=s.name, open_dead_letters=True))
    assert [(x.id, x.open_dead_letters) for x in with_dls.items] == [(one.saga_id, 1)]
    assert s.name in console.saga_type_names()
    assert sum(b.started for b in console.activity(now() + timedelta(minutes=1), minutes=60)) >= 2
    dls = console.search_dead_letters(DeadLetterQuery(saga_type=s.name))
    assert dls.total == 1 and [d.id for d in dls.items] == [dl.id] and dls.saga_types == {dl.id: s.name}
    groups = [g for g in console.open_dead_letter_groups() if g.saga_type == s.name]
    assert groups == [DeadLetterGroup(s.name, "a", "action", 1)]


def test_the_metrics_count_runs_retries_durations_and_dead_letters(store: SagaStore) -> None:
    metrics: Metrics = store
    s = saga("metrics")
    run = create_run(store, s, {"n": 1})
    open_before = metrics.dead_letter_counts().get("OPEN", 0)
    apply(store, s, run.saga_id, ActionFailed("a", ErrorInfo("Boom", "again"), True, 0.5), by="t")
    apply(store, s, run.saga_id, ActionSucceeded("a", {}), by="t")
    add_dead_letter(store, dead_letter("b"), run.saga_id, now())

    assert RunCounts(s.name, "RUNNING", 1) in metrics.run_counts()
    retries = {r.step: r for r in metrics.step_retries() if r.saga_type == s.name}
    assert retries["a"].actions == 1 and retries["a"].compensations == 0 and retries["b"].actions == 0
    durations = metrics.step_durations(now() - timedelta(minutes=5), MANY)
    assert [d.step for d in durations if d.saga_type == s.name] == ["a"]
    assert metrics.dead_letter_counts()["OPEN"] == open_before + 1
    assert s.name not in metrics.waits_timed_out()
    assert metrics.outbox_unsent() >= 0


def test_the_sweeps_find_deadlines_steps_waits_and_starts_that_are_due(store: SagaStore) -> None:
    sweeps: Sweeps = store
    at = now()
    late = create_run(store, saga("sweeps", deadline=60), {"n": 1}, now=at)
    waiting_saga = saga("sweeps_wait", Wait("approval", signal="approve", timeout=30))
    waiting = create_run(store, waiting_saga, {"n": 2}, now=at)
    scheduled = create_run(store, saga("sweeps_later"), {"n": 3}, now=at, start_at=at + timedelta(minutes=10))
    assert waiting.state is not None and waiting.state.status.value == "WAITING"

    assert late.saga_id in sweeps.due_deadlines(at + timedelta(minutes=2), MANY)
    assert late.saga_id not in sweeps.due_deadlines(at, MANY)
    due = {(i, step) for i, _, step, _ in sweeps.due_steps(at + timedelta(days=1), MANY)}
    assert (late.saga_id, "a") in due and (late.saga_id, "a") not in {
        (i, step) for i, _, step, _ in sweeps.due_steps(at, MANY)}
    assert (waiting.saga_id, waiting_saga.name, "approval") in sweeps.due_waits(at + timedelta(hours=1), MANY)
    assert waiting.saga_id not in {i for i, _, _ in sweeps.due_waits(at, MANY)}
    assert scheduled.saga_id in {i for i, _ in sweeps.due_starts(at + timedelta(minutes=11), MANY)}
    assert scheduled.saga_id not in {i for i, _ in sweeps.due_starts(at, MANY)}
    assert late.saga_id not in {link.parent_id for link in sweeps.child_links(at + timedelta(days=1), MANY)}


def test_worker_versions_record_heartbeats_definitions_runs_and_parked_steps(store: SagaStore) -> None:
    versions: WorkerVersions = store
    s, worker, at = saga("versions"), f"worker-{uuid.uuid4().hex}", now()
    run = create_run(store, s, {"n": 1})

    versions.announce_worker(worker, {s.name: {"1": "fp-1"}}, at)
    versions.announce_worker(worker, {s.name: {"1": "fp-1", "2": "fp-2"}}, at + timedelta(seconds=5))
    [seen] = [w for w in versions.live_workers(at - timedelta(seconds=1)) if w.name == worker]
    assert seen.versions == {s.name: {"1": "fp-1", "2": "fp-2"}}
    versions.forget_worker(worker)
    assert worker not in [w.name for w in versions.live_workers(at - timedelta(seconds=1))]

    recorded = RecordedDefinition(s.name, 1, "fp-1", [["step", "a"], ["step", "b"]])
    assert versions.record_definitions([recorded], at) == []
    other = RecordedDefinition(s.name, 1, "fp-other", [["step", "a"]])
    assert versions.record_definitions([other], at) == [(recorded, other)]
    assert recorded in versions.recorded_definitions()
    assert VersionCount(s.name, 1, "RUNNING", 1) in versions.version_counts(active_only=True)

    parked = ParkedStep(run.saga_id, f"task-{uuid.uuid4().hex}", s.name, 1, "a", "action")
    for _ in range(2):  # a second park of the same message changes nothing
        versions.park_step(parked, HistoryEvent("StepParked", "a", 1, {}), by=worker, now=at)
    assert [p for p in versions.parked_steps(MANY) if p.saga_id == run.saga_id] == [parked]
    assert [e.type for e in store.history(run.saga_id)].count("StepParked") == 1
    versions.unpark(run.saga_id, parked.task_id)
    assert [p for p in versions.parked_steps(MANY) if p.saga_id == run.saga_id] == []


def test_the_event_log_writes_units_outbox_markers_and_finds_stuck_and_failed_choreographies(
        store: SagaStore) -> None:
    log: EventLog = store
    saga_id, saga_type, event_id, at = uuid.uuid4().hex, f"choreo_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex, now()
    with log.event_unit() as u:
        u.create_saga(saga_id=saga_id, saga_type=saga_type, input={}, idempotency_key=None, now=at)
        u.write_outbox(event_id=event_id, saga_id=saga_id, saga_type=saga_type, event_type="OrderCreated",
                       causation_id=None, source="orders", envelope={"id": event_id}, targets=["payment"], now=at)
        u.mark_processed("payment", event_id, saga_id=saga_id, now=at)
        u.set_state(saga_id, state="RUNNING", failure_reason=None, deadline_at=at - timedelta(seconds=1), now=at)
        sent = u.outbox_ids

    assert log.event_processed("payment", event_id) and not log.event_processed("shipping", event_id)
    assert [r.event_id for r in log.outbox_of(saga_id)] == [event_id]
    assert [r.event_id for r in log.unsent_outbox(ids=sent)] == [event_id]
    log.outbox_send_failed(sent[0], "broker down")
    [row] = log.outbox_of(saga_id)
    assert (row.attempts, row.last_error) == (1, "broker down")
    assert log.mark_outbox_sent(sent, at) == 1 and log.mark_outbox_sent(sent, at) == 0
    assert log.unsent_outbox(ids=sent) == []
    assert saga_id in log.stuck_choreographies(at, MANY)

    dl = dead_letter("OrderCreated", kind="event")
    with log.event_unit() as u:
        u.add_dead_letter(dl, saga_id=saga_id, now=at)
        u.set_state(saga_id, state="FAILED", failure_reason="event dead-lettered", deadline_at=None, now=at)
    store.mark_dead_letters_sent([dl.id], at)
    assert (saga_id, saga_type) not in log.failed_choreographies_with_discards(MANY)
    with log.event_unit() as u:
        assert u.resolve_dead_letter(dl.id, status="DISCARDED", resolution="skip", now=at + timedelta(seconds=1))
    assert (saga_id, saga_type) in log.failed_choreographies_with_discards(MANY)
    assert [(d.id, d.status) for d in log.event_dead_letters(saga_id)] == [(dl.id, "DISCARDED")]
    assert saga_id not in log.stuck_choreographies(at, MANY)


def test_the_caller_transaction_sees_its_own_run_and_acts_only_after_its_commit(store: SagaStore) -> None:
    tx: CallerTransactions = store
    recorder: Recorder = store
    s = saga("joined")
    fired: list[str | None] = []
    for commit in (True, False):
        key = f"joined-{uuid.uuid4()}"
        with Session(get_engine(store.url)) as session:
            run = create_run(recorder, s, {"commit": commit}, idempotency_key=key, tx=session)
            assert tx.run_for_key_in(session, key, s.name, {"commit": commit}) == run.saga_id
            assert tx.saga_type_in(session, run.saga_id) == s.name
            with tx.event_unit_in(session) as u:
                u.add_history(run.saga_id, "Noted", now())
            before = list(fired)
            tx.after_commit(session, lambda i=run.saga_id: fired.append(store.saga_type(i)))
            assert fired == before  # nothing before the caller's commit
            session.commit() if commit else session.rollback()
        # Then a committed run is there with its note, and its action ran once; a rolled back one left nothing
        assert fired == [s.name]
        assert (store.saga_type(run.saga_id) == s.name) is commit
        assert ("Noted" in [e.type for e in store.history(run.saga_id)]) is commit


def test_the_notices_are_recorded_once_claimed_by_one_deliverer_and_retried_until_delivered(store: SagaStore) -> None:
    notices: Notices = store
    at = now()
    run = create_run(store, saga("notices"), {"n": 1}, now=at)
    key = f"failed:{run.saga_id}:2"
    body = {"id": key, "kind": "failed", "saga_id": run.saga_id, "reason": "stuck"}
    new = NewNotification(key, "failed", run.saga_id, "notices", body)

    # recorded once: a second insert of the same key (a resend, another sweeper) changes nothing
    assert notices.record_notifications([new], state="PENDING", now=at) == [key]
    assert notices.record_notifications([new], state="PENDING", now=at + timedelta(seconds=1)) == []
    assert key in notices.due_notifications(at, MANY)
    assert notices.recorded_notifications([key, f"failed:{run.saga_id}:3"]) == {key}

    # claimed by one deliverer only; not due while the lease lasts
    claimed = notices.claim_notification(key, at, at + timedelta(minutes=1))
    assert claimed is not None and claimed.body == body and claimed.attempts == 0
    assert notices.claim_notification(key, at, at + timedelta(minutes=1)) is None
    assert key not in notices.due_notifications(at + timedelta(seconds=30), MANY)

    # a failed attempt is kept and makes it due again at its backoff; a delivered one never again
    notices.notification_attempted(key, target="webhook", at=at, ok=False, error="refused",
                                   next_attempt_at=at + timedelta(seconds=10))
    assert key not in notices.due_notifications(at + timedelta(seconds=5), MANY)
    assert key in notices.due_notifications(at + timedelta(seconds=10), MANY)
    assert notices.claim_notification(key, at + timedelta(seconds=10), at + timedelta(minutes=2)) is not None
    notices.notification_attempted(key, target="webhook", at=at + timedelta(seconds=11), ok=True, status_code=204)
    assert key not in notices.due_notifications(at + timedelta(days=1), MANY)
    assert notices.claim_notification(key, at + timedelta(days=1), at + timedelta(days=2)) is None
    [shown] = notices.notifications(saga_id=run.saga_id)
    assert (shown.state, shown.attempts, shown.delivered_at) == ("DELIVERED", 2, at + timedelta(seconds=11))
    assert [(a.ok, a.status_code, a.error) for a in notices.notification_attempts([key])[key]] == [
        (False, None, "refused"), (True, 204, None)]
    assert notices.notification_counts().get("DELIVERED", 0) >= 1

    # a RUNNING run unchanged since `at` is idle before a later time, not before `at`
    idle = {r.saga_id: r for r in notices.runs_without_progress(at + timedelta(hours=1), MANY)}
    assert run.saga_id in idle and idle[run.saga_id].state == "RUNNING"
    assert run.saga_id not in {r.saga_id for r in notices.runs_without_progress(at, MANY)}
