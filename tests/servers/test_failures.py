"""Failure paths with a real worker: retries, permanent errors, dead letters, timeouts, the
sweeper and operator actions. Test sagas come from tests/support/sagas.py."""
from __future__ import annotations

import base64
import json
import os
from datetime import timedelta

import pytest

from tests.support.interfaces import new_id, wait_until
from tests.support.sagas import FAST, FAST_COMP
from workflows import InvalidOperation, SagaNotFound, get_runtime, get_saga, start_saga, wait_for
from workflows.operations.dead_letters import discard, list_dead_letters, redrive
from workflows.operations.actions import cancel, resume, retry_step
from workflows.operations.sweeper import sweep

pytestmark = pytest.mark.usefixtures("running_worker")


def effects(redis_client, saga_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.decode() for e in redis_client.lrange(f"effects:{saga_id}", 0, -1)]


def broker_dead_letters(redis_client) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """The bodies of the messages on the broker's `dead_letter` queue (a Redis list of kombu messages)."""
    messages = [json.loads(m) for m in redis_client.lrange("dead_letter", 0, -1)]
    return [json.loads(base64.b64decode(m["body"])) if m.get("properties", {}).get("body_encoding") == "base64"
            else m["body"] for m in messages]


def test_transient_failures_are_retried_with_backoff_then_succeed(redis_client):  # type: ignore[no-untyped-def]
    view = wait_for(start_saga("tests.three", {"behaviour": {"a": {"fail_times": 2}}}), timeout=30)

    assert view.state == "COMPLETED"
    assert view.step("a").attempts == 3
    failed = [e for e in view.events if e.type == "StepAttemptFailed"]
    assert [e.attempt for e in failed] == [1, 2]
    for e in failed:  # full jitter: within [0, the capped interval for that attempt]
        assert 0.0 <= e.detail["retry_in"] <= FAST.interval(e.attempt) + 1e-3
        assert "flaked on attempt" in e.detail["error"]
    assert effects(redis_client, view.id) == ["action:a:1", "action:a:2", "action:a:3", "action:b:1", "action:c:1"]


def test_permanent_error_compensates_after_one_attempt(redis_client):  # type: ignore[no-untyped-def]
    view = wait_for(start_saga("tests.three", {"behaviour": {"c": {"fail": "permanent"}}}), timeout=30)

    assert view.state == "COMPENSATED"
    assert view.step("c").attempts == 1 and view.step("c").status == "FAILED"
    assert "PermanentError" in view.step("c").error
    assert view.dead_letters == []  # a permanent error is not an exhausted retry
    assert effects(redis_client, view.id) == ["action:a:1", "action:b:1", "action:c:1", "compensation:a:1"]


def test_exhausted_action_lands_in_dead_letter_queue_and_saga_compensates(redis_client):  # type: ignore[no-untyped-def]
    before = redis_client.llen("dead_letter")

    view = wait_for(start_saga("tests.three", {"behaviour": {"c": {"fail_times": 99}}}), timeout=30)

    assert view.state == "COMPENSATED"
    assert view.step("c").status == "FAILED" and view.step("c").attempts == FAST.max_attempts
    [dl] = view.dead_letters
    assert (dl.kind, dl.step, dl.task_name, dl.queue, dl.attempts) == ("action", "c", "tests.action", "tests", 3)
    assert "Transient" in dl.exception and "Traceback" in dl.traceback
    assert dl.args == [view.id, "c"]
    assert redis_client.llen("dead_letter") == before + 1
    assert any(p["dead_letter_id"] == dl.id and p["saga_id"] == view.id for p in broker_dead_letters(redis_client))
    assert "DeadLettered" in view.event_types("c")
    with pytest.raises(InvalidOperation, match="nothing to redrive"):
        redrive(dl.id)


def test_exhausted_compensation_fails_the_saga_then_redrive_completes_it_once(redis_client):  # type: ignore[no-untyped-def]
    saga_id = new_id()
    redis_client.set(f"switch:{saga_id}:a", 1)  # a's compensation fails until the switch is removed
    data = {"behaviour": {"c": {"fail": "permanent"}}, "compensation_behaviour": {"a": {"switch": True}}}

    view = wait_for(start_saga("tests.three", data, saga_id=saga_id), timeout=30)

    assert view.state == "FAILED"
    assert view.step("a").status == "COMPENSATION_FAILED"
    assert view.step("a").compensation_attempts == FAST_COMP.max_attempts
    assert "an operator must" in view.failure_reason
    [dl] = [d for d in view.dead_letters if d.status == "OPEN"]
    assert dl.kind == "compensation" and dl.step == "a"

    redis_client.delete(f"switch:{saga_id}:a")  # the operator fixes the cause
    redrive(dl.id, who="alice", reason="downstream fixed")
    with pytest.raises(InvalidOperation):
        redrive(dl.id, who="alice", reason="double click")

    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED"
    assert view.step("a").status == "COMPENSATED"
    assert effects(redis_client, saga_id).count("compensation:a:1") == 2  # 3 failed tries, then 1 redrive
    assert len([e for e in effects(redis_client, saga_id) if e.startswith("compensation:a")]) == 4
    assert get_runtime().store.dead_letter(dl.id).status == "REDRIVEN"
    resumed = [e for e in view.events if e.type == "CompensationResumed"]
    assert len(resumed) == 1 and resumed[0].detail["who"] == "alice"


def test_resume_and_retry_step_act_on_a_failed_saga(redis_client):  # type: ignore[no-untyped-def]
    saga_id = new_id()
    redis_client.set(f"switch:{saga_id}:a", 1)
    data = {"behaviour": {"c": {"fail": "permanent"}}, "compensation_behaviour": {"a": {"switch": True}}}
    assert wait_for(start_saga("tests.three", data, saga_id=saga_id), timeout=30).state == "FAILED"
    with pytest.raises(InvalidOperation):
        cancel(saga_id, reason="too late")  # only a RUNNING saga can be cancelled

    redis_client.delete(f"switch:{saga_id}:a")
    resume(saga_id, reason="fixed", who="bob")

    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED"
    with pytest.raises(InvalidOperation):
        retry_step(saga_id, "a")
    with pytest.raises(InvalidOperation):
        resume(saga_id)
    # the resume resolved the compensation's dead letter in the same transition
    assert list_dead_letters(saga_id=saga_id) == []
    [dl] = list_dead_letters(saga_id=saga_id, status=None)
    assert (dl.status, dl.resolution) == ("REDRIVEN", "resumed by bob")
    with pytest.raises(InvalidOperation, match="not OPEN"):
        discard(dl.id, who="bob", reason="already handled")


def test_a_resume_decided_on_a_failed_saga_that_another_resume_moved_on_does_nothing(redis_client, monkeypatch):  # type: ignore[no-untyped-def]
    from tests.support.interfaces import failed_saga

    # Given a FAILED saga, read by two operators at once; the first one's resume lands
    saga_id = failed_saga(redis_client)
    store = get_runtime().store
    seen_failed = store.load(saga_id)
    redis_client.delete(f"switch:{saga_id}:a")
    resume(saga_id, reason="fixed", who="alice")

    # When the second resume goes ahead on what it read (the saga was FAILED then)
    reads = iter([seen_failed])
    real_load = store.load
    monkeypatch.setattr(store, "load", lambda saga_id: next(reads, None) or real_load(saga_id))
    with pytest.raises(InvalidOperation, match="changed"):
        resume(saga_id, reason="fixed too", who="bob")
    monkeypatch.undo()

    # Then it was refused, instead of sending the compensation a second time as a "retry"
    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED"
    assert "StepRetriedByOperator" not in view.event_types()
    assert [e.detail["who"] for e in view.events if e.type == "CompensationResumed"] == ["alice"]


def test_discarding_a_dead_letter_needs_a_reason_and_is_recorded(redis_client):  # type: ignore[no-untyped-def]
    view = wait_for(start_saga("tests.three", {"behaviour": {"c": {"fail_times": 99}}}), timeout=30)
    [dl] = view.dead_letters
    with pytest.raises(InvalidOperation, match="reason"):
        discard(dl.id, who="bob", reason="")

    assert discard(dl.id, who="bob", reason="customer re-ordered").status == "DISCARDED"
    assert "DeadLetterDiscarded" in get_saga(view.id).event_types()
    assert get_runtime().store.dead_letter(dl.id).resolution == "discarded by bob: customer re-ordered"


def test_step_hanging_past_its_time_limit_is_timed_out_and_compensated(redis_client):  # type: ignore[no-untyped-def]
    view = wait_for(start_saga("tests.three", {"behaviour": {"c": {"sleep": 8}}}), timeout=30)

    assert view.state == "COMPENSATED"
    assert "StepTimedOut" in view.event_types("c")
    assert view.step("c").status == "COMPENSATED"  # outcome unknown: compensated too
    assert "time limit of 2s" in view.step("c").error
    assert [e.step for e in view.events if e.type == "StepCompensated"] == ["c", "a"]


def test_step_whose_queue_has_no_consumer_is_timed_out_by_the_sweeper(redis_client):  # type: ignore[no-untyped-def]
    saga_id = start_saga("tests.orphan", {})
    wait_until(lambda: get_saga(saga_id).step("lost").status == "RUNNING")
    assert get_saga(saga_id).state == "RUNNING"

    deadline = get_saga(saga_id).step("lost").deadline_at
    assert deadline is not None
    assert f"{saga_id}:lost" not in sweep(get_runtime(), now=deadline - timedelta(seconds=0.5)).timed_out
    report = sweep(get_runtime(), now=deadline + timedelta(seconds=0.5))  # the clock moved, not slept

    assert f"{saga_id}:lost" in report.timed_out
    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED"
    assert [e.step for e in view.events if e.type == "StepCompensated"] == ["lost", "a"]
    assert "StepTimedOut" in view.event_types("lost")
    # a second sweep finds nothing more to do
    assert f"{saga_id}:lost" not in sweep(get_runtime(), now=deadline + timedelta(seconds=1)).timed_out


def test_saga_deadline_cancels_and_a_late_result_changes_nothing(redis_client):  # type: ignore[no-untyped-def]
    saga_id = start_saga("tests.deadline", {"behaviour": {"slow": {"sleep": 2.5}}})
    wait_until(lambda: get_saga(saga_id).step("slow").status == "RUNNING")
    deadline = get_saga(saga_id).deadline_at
    assert deadline is not None
    assert saga_id not in sweep(get_runtime(), now=deadline - timedelta(seconds=0.1)).cancelled

    report = sweep(get_runtime(), now=deadline + timedelta(seconds=0.1))  # the clock moved, not slept

    assert saga_id in report.cancelled
    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED"
    assert "SagaCancelled" in view.event_types()
    # the slow step finishes after the cancel: recorded, nothing else changes
    wait_until(lambda: "StaleMessageIgnored" in get_saga(saga_id).event_types("slow"), timeout=10)
    after = get_saga(saga_id)
    assert after.state == "COMPENSATED" and after.step("slow").status == "COMPENSATED"


def test_operator_cancel_compensates_a_running_saga(redis_client):  # type: ignore[no-untyped-def]
    saga_id = start_saga("tests.three", {"behaviour": {"b": {"sleep": 1.5}}})
    wait_until(lambda: get_saga(saga_id).step("b").status == "RUNNING")

    cancel(saga_id, reason="customer asked", who="carol")

    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED"
    cancelled = [e for e in view.events if e.type == "SagaCancelled"][0]
    assert cancelled.detail == {"reason": "customer asked", "who": "carol", "by": "operator:carol"}
    # b has no compensation, its outcome was unknown: it is skipped and said so; a is undone
    assert [e.step for e in view.events if e.type == "StepCompensated"] == ["a"]
    assert view.step("b").status == "TIMED_OUT"


def test_a_message_for_a_saga_type_the_worker_does_not_know_is_dead_lettered(app, redis_client):  # type: ignore[no-untyped-def]
    saga_id = new_id()
    before = redis_client.llen("dead_letter")

    app.send_task("tests.action", args=[saga_id, "a"], queue="tests",
                  kwargs={"saga": "tests.not_deployed", "kind": "action", "version": 1, "input": {}, "attempt": 1})

    [dl] = wait_until(lambda: list_dead_letters(saga_id=saga_id))
    assert dl.kind == "action" and dl.task_name == "tests.action" and "UnknownSaga" in dl.exception
    assert dl.kwargs["saga"] == "tests.not_deployed"
    # the broker copy goes out right after the row commits: wait for it, then exactly one
    wait_until(lambda: redis_client.llen("dead_letter") > before, 20, "the dead letter's broker copy")
    assert redis_client.llen("dead_letter") == before + 1


def test_a_message_for_a_saga_the_store_does_not_have_is_dead_lettered(app, redis_client):  # type: ignore[no-untyped-def]
    # Given a step message for a known saga type but a run this database has never seen (a worker
    # pointed at another database, or a run deleted while its message waited)
    saga_id = new_id()
    before = redis_client.llen("dead_letter")

    app.send_task("tests.action", args=[saga_id, "a"], queue="tests",
                  kwargs={"saga": "tests.three", "kind": "action", "version": 2, "input": {}, "attempt": 1})

    # Then it is kept as a dead letter, in the table and on the broker, not dropped; no run appears
    [dl] = wait_until(lambda: list_dead_letters(saga_id=saga_id))
    assert dl.kind == "action" and dl.step == "a" and dl.exception.startswith("SagaNotFound: ")
    assert dl.kwargs["saga"] == "tests.three" and dl.args == [saga_id, "a"]
    wait_until(lambda: redis_client.llen("dead_letter") > before, 20, "the dead letter's broker copy")
    assert redis_client.llen("dead_letter") == before + 1
    [copy] = [m for m in broker_dead_letters(redis_client) if m["dead_letter_id"] == dl.id]
    assert copy["saga_id"] == saga_id and copy["exception"] == dl.exception
    with pytest.raises(SagaNotFound):
        get_saga(saga_id)


def test_database_connections_dropped_mid_step_are_retried_by_celery_and_the_saga_completes(redis_client):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from workflows.store.db import dispose_engines

    saga_id = start_saga("tests.three", {"behaviour": {"a": {"sleep": 1.5}}})
    wait_until(lambda: effects(redis_client, saga_id) == ["action:a:1"])

    # When the database drops every connection while the step runs (a failover, a restart) ...
    if os.environ.get("TEST_PGBOUNCER") == "1":  # the workers' connections are PgBouncer's clients
        killed = pgbouncer_drops_its_clients(os.environ["TEST_PG_URL"])
    else:
        with get_runtime().store.sessions() as s:
            killed = s.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    dispose_engines()  # this test process's own pool held some of them
    get_runtime()._store = None
    assert killed and killed >= 1

    # ... the worker's report fails with OperationalError, Celery's autoretry delivers the message
    # again, the step runs again (idempotent; the same attempt of the saga) and the saga completes.
    view = wait_for(saga_id, timeout=60)
    assert view.state == "COMPLETED"
    assert effects(redis_client, saga_id).count("action:a:1") == 2
    assert view.step("a").attempts == 1 and "StepAttemptFailed" not in view.event_types()


def pgbouncer_drops_its_clients(url: str) -> int:
    """PgBouncer's `KILL <db>` (every client and server connection of the database dropped), then
    `RESUME <db>`, on its admin console: what a restart of the pooler does to the workers. Returns
    how many client connections it had."""
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = psycopg2.connect(host=u.host, port=u.port, user="postgres", dbname="pgbouncer")
    admin.autocommit = True  # the admin console takes only simple queries, outside a transaction
    try:
        with admin.cursor() as cur:
            cur.execute("SHOW CLIENTS")
            clients = sum(1 for row in cur.fetchall() if row[2] == u.database)  # type, user, database, ...
            cur.execute(f"KILL {u.database}")
            cur.execute(f"RESUME {u.database}")
    finally:
        admin.close()
    return clients


def test_a_second_sweeper_finding_the_first_ones_transition_publishes_nothing(app):  # type: ignore[no-untyped-def]
    from celery.signals import before_task_publish

    from tests.support.sagas import three_steps
    from tests.support.runs import create_run
    from workflows.core.state import ActionTimedOut

    store = get_runtime().store
    created = create_run(store, three_steps, {})  # its first step never published: no worker touches it
    assert created.state is not None
    saga_id, version = created.saga_id, created.state.version
    sent: list[str] = []

    def count(sender=None, **_):  # type: ignore[no-untyped-def]
        sent.append(sender)

    before_task_publish.connect(count)
    try:
        # Given two sweeps (beat and `sagas sweep`) that both saw step a past its deadline at `version`
        first = get_runtime().loop.apply(three_steps, saga_id, ActionTimedOut("a", "lost"),
                                         by="sweeper", expected_version=version)
        second = get_runtime().loop.apply(three_steps, saga_id, ActionTimedOut("a", "lost"),
                                          by="sweeper", expected_version=version)
    finally:
        before_task_publish.disconnect(count)

    # Then the first one's compensation is published once; the second, stale, publishes nothing
    assert first.transition is not None and second.stale
    assert sent == ["tests.compensate"]


def test_a_first_step_never_published_is_sent_again_by_the_sweeper_and_the_saga_completes(redis_client, monkeypatch):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    import kombu.exceptions

    rt = get_runtime()
    # Given a saga recorded by start_saga while the broker was down for its first message: the
    # saga is accepted (its id returned, not an error a caller would retry into a second order)
    def broker_down(*_: object) -> None:
        raise kombu.exceptions.OperationalError("Error 111 connecting to the broker")

    monkeypatch.setattr(rt.dispatcher, "send_step", broker_down)
    saga_id = start_saga("tests.three", {})
    monkeypatch.undo()
    first = rt.store.load(saga_id)
    assert first.step("a").status.value == "RUNNING" and first.caused_by == "start"
    deadline, first_task_id = first.step("a").deadline_at, first.step("a").task_id
    assert deadline is not None
    assert sweep(rt, now=deadline - timedelta(seconds=1)).redispatched == []  # not before step a's deadline

    # When the sweeper runs after that deadline
    report = sweep(rt, now=deadline + timedelta(seconds=0.1))

    # Then it sends step a again, under a new version and task id, and the saga runs to the end
    assert report.redispatched.count(f"{saga_id}:a") == 1 and f"{saga_id}:a" not in report.timed_out
    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPLETED"
    assert effects(redis_client, saga_id) == ["action:a:1", "action:b:1", "action:c:1"]
    redispatched = [e for e in view.events if e.type == "StepRedispatched"]
    assert [(e.step, e.detail["by"]) for e in redispatched] == [("a", "sweeper")]
    dispatched = [e.detail["task_id"] for e in view.events if e.type == "StepDispatched" and e.step == "a"]
    assert len(dispatched) == 2 and dispatched[0] == first_task_id and dispatched[1] != dispatched[0]
    assert view.step("a").attempts == 1
