"""Runs that need a person, recorded once and delivered (`workflows.notifications`): a step that runs
out of retries, a FAILED run, a run without progress past its bound (the clock moves), a webhook
target down for a while (a real HTTP server in the test, started after attempts failed), and a
duplicate delivery of the step message. In process: SQLite, the recording dispatcher, the test clock."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from workflows import Saga, Step, register_saga, start_saga
from workflows.core.errors import DefinitionError
from workflows.interfaces.api import create_app
from workflows.notifications import verify
from workflows.notifications.webhook import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from workflows.operations.dead_letters import list_dead_letters
from workflows.operations.notifications import list_notifications
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import Sent
from workflows.testing import Clock, Worker
from tests.support.inproc_steps import POLICY, act, settle, switched_off, undo
from tests.support.webhook_receiver import Receiver, free_port

SECRET = "notify-test-secret"
TOKEN = "notify-token"

SAGAS = [
    Saga("notify.line", steps=[
        Step("a", action=act, compensation=undo, retry=POLICY, compensation_retry=POLICY, timeout=30),
        Step("b", action=act, compensation=undo, retry=POLICY, compensation_retry=POLICY, timeout=30),
    ]),
    Saga("notify.slow", stuck_after=timedelta(minutes=10), steps=[
        Step("a", action=act, compensation=undo, retry=POLICY, timeout=7200),
    ]),
    Saga("notify.plain_slow", steps=[
        Step("a", action=act, compensation=undo, retry=POLICY, timeout=7200),
    ]),
]


@pytest.fixture(autouse=True)
def _sagas(saga_registries: None) -> None:
    """Registered per test (the kit restores the registry after it), not at import: a step with a
    two-hour time limit in the process's registry would fail a Redis worker's visibility-timeout
    check in a session that runs every tier."""
    for saga in SAGAS:
        register_saga(saga)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def receiver(port: int) -> Iterator[Receiver]:
    r = Receiver(port)
    yield r
    r.stop()


@pytest.fixture
def saga_settings(saga_settings: dict[str, Any], port: int) -> dict[str, Any]:
    return {**saga_settings, "notify_webhook_url": f"http://127.0.0.1:{port}/hooks/sagas",
            "notify_webhook_secret": SECRET, "notify_webhook_timeout": 2.0, "notify_retry_initial": 10.0,
            "notify_retry_max": 60.0, "stuck_after": 3600.0, "inline_steps": False}


def exhausting_b() -> dict[str, Any]:
    """Step b fails on every attempt: it runs out of its 3 attempts."""
    return {"behaviour": {"b": {"fail_times": 99}}}


def test_a_step_that_runs_out_of_retries_gives_one_notification_delivered_signed(
        rt: Runtime, worker: Worker, clock: Clock, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.start()
    # When step b runs out of its retries (the run compensates a and ends COMPENSATED)
    with caplog.at_level(logging.ERROR, "workflows.notifications"):
        saga_id = start_saga("notify.line", exhausting_b())
        settle(worker, clock)
    assert rt.store.get(saga_id).state == "COMPENSATED"

    # Then one notification: the dead letter, delivered once to the webhook, signed, and logged once
    [n] = list_notifications(saga_id=saga_id)
    [dl] = list_dead_letters("OPEN", saga_id=saga_id)
    assert (n.kind, n.state, n.id) == ("dead_letter", "DELIVERED", f"dead_letter:{saga_id}:{dl.id}")
    assert "gave up after 3 attempt(s)" in n.reason and n.body["step"] == "b"
    [got] = receiver.requests
    assert got.body == n.body and got.headers[ID_HEADER] == n.id
    assert verify(SECRET, got.headers[TIMESTAMP_HEADER], got.raw, got.headers[SIGNATURE_HEADER])
    assert not verify("another secret", got.headers[TIMESTAMP_HEADER], got.raw, got.headers[SIGNATURE_HEADER])
    assert [(a.target, a.ok, a.status_code) for a in n.attempt_log] == [("log", True, None), ("webhook", True, 200)]
    assert [r.getMessage() for r in caplog.records if r.name == "workflows.notifications"] == [
        f"saga needs a person: dead_letter of notify.line {saga_id}: {n.reason}"]

    # And sweeps later send nothing more
    clock.advance(3600)
    assert not rt.notifier.deliver_due(clock()) and len(receiver.requests) == 1


def test_a_run_that_fails_gives_a_failed_and_a_dead_letter_notification(rt: Runtime, worker: Worker, clock: Clock,
                                                                       receiver: Receiver) -> None:
    receiver.start()
    # Given b fails for good and a's compensation keeps failing: the run ends FAILED
    switched_off.add("a")
    saga_id = start_saga("notify.line", {"behaviour": {"b": {"fail": "permanent"}},
                                         "compensation_behaviour": {"a": {"switch": True}}})
    settle(worker, clock)
    assert rt.store.get(saga_id).state == "FAILED"

    # Then two notifications, each once: the compensation's dead letter and the FAILED run
    kinds = sorted(n.kind for n in list_notifications(saga_id=saga_id))
    assert kinds == ["dead_letter", "failed"]
    assert sorted(r.body["kind"] for r in receiver.requests) == kinds


def test_a_run_without_progress_past_its_bound_gives_one_notification(rt: Runtime, worker: Worker,
                                                                       clock: Clock, receiver: Receiver) -> None:
    receiver.start()
    # Given a run whose step's message is never taken (its time limit is 2 h; its saga's bound 10 min)
    saga_id = start_saga("notify.slow", {})
    other = start_saga("notify.plain_slow", {})  # bound: SAGA_STUCK_AFTER, 1 h

    # When 9 minutes pass: nothing
    clock.advance(9 * 60)
    assert rt.notifier is not None and not _sweep(rt).notified

    # When 11 minutes have passed: one no_progress notification, of the run with the 10 min bound
    clock.advance(2 * 60)
    report = _sweep(rt)
    assert report.notified == [f"no_progress:{saga_id}:{rt.store.load(saga_id).version}"]
    assert report.notifications_delivered == report.notified
    [n] = list_notifications(saga_id=saga_id)
    assert (n.kind, n.body["bound_seconds"], n.body["state"]) == ("no_progress", 600.0, "RUNNING")

    # And later sweeps record it no more; the other run's own bound (1 h) gives it its own, once
    clock.advance(30 * 60)
    assert not _sweep(rt).notified
    clock.advance(30 * 60)
    assert _sweep(rt).notified == [f"no_progress:{other}:{rt.store.load(other).version}"]
    assert not _sweep(rt).notified
    assert sorted(r.body["kind"] for r in receiver.requests) == ["no_progress", "no_progress"]


def _sweep(rt: Runtime):  # type: ignore[no-untyped-def]
    from workflows.operations.sweeper import sweep
    return sweep(rt)


def test_a_webhook_down_for_a_while_gets_each_notification_once_after_it_is_back(
        rt: Runtime, worker: Worker, clock: Clock, receiver: Receiver) -> None:
    # Given the target is down while two runs run out of retries
    first = start_saga("notify.line", exhausting_b())
    second = start_saga("notify.line", exhausting_b())
    settle(worker, clock)
    pending = list_notifications(state="PENDING")
    assert sorted(n.saga_id for n in pending) == sorted([first, second])
    assert all([a.target for a in n.attempt_log] == ["log", "webhook"] and not n.attempt_log[1].ok
               and "Connection refused" in (n.attempt_log[1].error or "") for n in pending)

    # When sweeps come while it is down: each attempt is kept, the next one after a longer backoff
    for _ in range(3):
        clock.advance(120)
        assert _sweep(rt).notifications_delivered == []
    n = list_notifications(saga_id=first)[0]
    assert n.attempts == 4 and n.state == "PENDING"
    waits = [(b.at - a.at).total_seconds() for a, b in zip(n.attempt_log[1:], n.attempt_log[2:])]
    assert waits[0] >= 10 and all(w > 0 for w in waits)

    # When it comes back
    receiver.start()
    clock.advance(120)
    report = _sweep(rt)

    # Then each notification is delivered exactly once, signed
    assert sorted(report.notifications_delivered) == sorted(n.id for n in pending)
    for _ in range(3):
        clock.advance(600)
        assert _sweep(rt).notifications_delivered == []
    assert sorted(r.headers[ID_HEADER] for r in receiver.requests) == sorted(n.id for n in pending)
    assert all(verify(SECRET, r.headers[TIMESTAMP_HEADER], r.raw, r.headers[SIGNATURE_HEADER])
               for r in receiver.requests)
    assert {n.state for n in list_notifications()} == {"DELIVERED"}

    # And the console shows every attempt of each
    app = create_app(rt.settings.model_copy(update={"api_token": TOKEN}), runtime=rt)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.post("/console/login", data={"token": TOKEN, "next": "/console/"},
                           follow_redirects=False).status_code == 303
        page = client.get("/console/notifications")
        api = client.get("/api/notifications", params={"saga_id": first})
        saga_page = client.get(f"/console/sagas/{first}")
        one = client.get("/console/notifications", params={"saga": first})
    assert page.status_code == 200
    for n in list_notifications():
        assert f'data-notification="{n.id}"' in page.text
    assert page.text.count('data-attempt="webhook" data-ok="no"') == 8
    assert page.text.count('data-attempt="webhook" data-ok="yes"') == 2
    assert f'href="/console/notifications?saga={first}"' in saga_page.text
    assert one.text.count("data-notification=") == 1 and f"dead_letter:{first}:" in one.text
    [shown] = api.json()
    assert shown["state"] == "DELIVERED" and [a["status_code"] for a in shown["attempt_log"]] == [
        None, None, None, None, None, 200]


def test_a_duplicate_delivery_of_the_step_message_sends_nothing_twice(rt: Runtime, worker: Worker, clock: Clock,
                                                                      receiver: Receiver,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.start()
    published: list[Sent] = []  # the worker takes what it delivers off the dispatcher's record: keep a copy
    send_step = worker.dispatcher.send_step

    def keeping(run: Any, cmd: Any) -> None:
        send_step(run, cmd)
        published.append(worker.dispatcher.sent[-1])

    monkeypatch.setattr(worker.dispatcher, "send_step", keeping)
    saga_id = start_saga("notify.line", exhausting_b())
    settle(worker, clock)
    [last] = [m for m in published if m.step == "b"]
    assert len(list_notifications(saga_id=saga_id)) == 1 and len(receiver.requests) == 1

    # When the message of b's last attempt is delivered again (a broker's redelivery)
    worker.deliver(last, redelivered=True, retries=2)
    worker.deliver(last, retries=2)
    worker.drain()
    clock.advance(3600)
    _sweep(rt)

    # Then nothing is recorded or sent twice
    assert len(list_notifications(saga_id=saga_id)) == 1 and len(receiver.requests) == 1


def test_without_a_webhook_a_notification_is_only_logged(rt: Runtime, worker: Worker, clock: Clock) -> None:
    rt._notifier = None
    rt._projections = None
    rt.settings = rt.settings.model_copy(update={"notify_webhook_url": None})
    saga_id = start_saga("notify.line", exhausting_b())
    settle(worker, clock)
    [n] = list_notifications(saga_id=saga_id)
    assert n.state == "LOGGED" and [a.target for a in n.attempt_log] == ["log"]


def test_a_webhook_without_a_secret_and_a_bad_bound_are_refused(rt: Runtime) -> None:
    from celery import Celery

    from workflows import install
    from workflows.notifications.setup import webhook_of

    unsigned = rt.settings.model_copy(update={"notify_webhook_secret": None})
    with pytest.raises(DefinitionError, match="SAGA_NOTIFY_WEBHOOK_SECRET"):
        webhook_of(unsigned)
    with pytest.raises(DefinitionError, match="SAGA_NOTIFY_WEBHOOK_SECRET"):  # a worker does not start
        install(Celery("notify-refused", broker="memory://"), settings=unsigned)
    with pytest.raises(DefinitionError, match="stuck_after must be seconds > 0"):
        Saga("notify.bad", stuck_after=0, steps=[Step("a", action=act, compensation=None)])
    assert Saga("notify.ok", stuck_after=timedelta(minutes=2), steps=[
        Step("a", action=act, compensation=None)]).stuck_seconds == 120.0


def test_the_metrics_count_runs_without_progress_and_notifications_by_state(rt: Runtime, worker: Worker,
                                                                             clock: Clock) -> None:
    from workflows.interfaces.metrics import SagaCollector

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        collector = SagaCollector(lambda: rt.store, clock=clock, stuck_after=rt.settings.stuck_after)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in collector.collect() for s in f.samples
                if s.name in ("sagas_no_progress", "saga_notifications")}

    # Given a run of the saga with a 10 min bound whose message is never taken, and the webhook down
    start_saga("notify.slow", {})
    clock.advance(5 * 60)
    assert not any(v for (name, _), v in samples().items() if name == "sagas_no_progress")

    clock.advance(6 * 60)
    got = samples()
    assert got[("sagas_no_progress", (("saga_type", "notify.slow"),))] == 1
    assert got[("saga_notifications", (("state", "PENDING"),))] == 0  # not recorded until a sweep
    _sweep(rt)
    assert samples()[("saga_notifications", (("state", "PENDING"),))] == 1


def test_a_step_whose_worker_was_lost_gives_one_lost_worker_notification(rt: Runtime, worker: Worker, clock: Clock,
                                                                         receiver: Receiver) -> None:
    receiver.start()
    # Given step a ran, and the message of b was taken by a worker that died (never reported on)
    saga_id = start_saga("notify.line", {})
    [first] = worker.dispatcher.steps()
    worker.dispatcher.sent.clear()
    worker.deliver(first)
    assert [m.step for m in worker.dispatcher.steps()] == ["b"]
    worker.dispatcher.sent.clear()  # b's message is lost with its worker

    # When b's deadline (30 s + the grace) passes and the sweeper times it out
    clock.advance(60)
    report = _sweep(rt)
    worker.drain()  # a's compensation
    assert report.timed_out == [f"{saga_id}:b"] and rt.store.get(saga_id).state == "COMPENSATED"

    # Then one lost_worker notification, delivered once; more sweeps add nothing
    [n] = list_notifications(saga_id=saga_id)
    assert (n.kind, n.body["step"], n.state) == ("lost_worker", "b", "DELIVERED")
    clock.advance(3600)
    _sweep(rt)
    assert len(list_notifications(saga_id=saga_id)) == 1 and len(receiver.requests) == 1


def test_sagas_notifications_on_the_command_line(rt: Runtime, worker: Worker, clock: Clock,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from click.testing import CliRunner

    from workflows.interfaces import cli

    monkeypatch.setattr(cli, "_runtime", lambda: rt)
    # Given a notification the webhook (down) has not taken
    saga_id = start_saga("notify.line", exhausting_b())
    settle(worker, clock)

    out = CliRunner().invoke(cli.main, ["notifications", "--state", "pending", "--json"])
    assert out.exit_code == 0, out.output
    [n] = json.loads(out.output)
    assert n["saga_id"] == saga_id and n["kind"] == "dead_letter" and n["next_attempt_at"]
    assert [(a["target"], a["ok"]) for a in n["attempt_log"]] == [("log", True), ("webhook", False)]
    table = CliRunner().invoke(cli.main, ["notifications", "--saga", saga_id])
    assert table.exit_code == 0 and "1 notification(s)" in table.output and "dead_letter" in table.output
