"""Runs that need a person, with a real prefork worker on the real broker and PostgreSQL: the worker
records each event once and POSTs it to the webhook after its commit; the webhook (a real HTTP
server in the test) is down at first, so the attempts fail and are kept; once it is up, a sweep
delivers each event exactly once, signed; a duplicate delivery of a step message sends nothing.

The module has a database of its own (it sweeps the whole database), and a worker of its own on the
queue `notify` with the webhook configured (SAGA_NOTIFY_WEBHOOK_URL, _SECRET)."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

import tests.support.notify_sagas  # noqa: F401  (registers the saga in this process too)
from tests.support.databases import own_pg_database
from tests.support.interfaces import new_id, wait_until
from tests.support.webhook_receiver import Receiver, free_port
from tests.support.workers import WorkerProcess, worker_env
from workflows import start_saga
from workflows.interfaces.api import create_app
from workflows.notifications import verify
from workflows.notifications.webhook import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from workflows.operations.dead_letters import list_dead_letters
from workflows.operations.notifications import NotificationView, list_notifications
from workflows.operations.sweeper import sweep
from workflows.runtime.container import Runtime, activate, utcnow
from workflows.runtime.settings import get_settings

SECRET = "s3cret-for-the-hook"
TOKEN = "notify-console-token"


@pytest.fixture(scope="module")
def notify_db() -> Iterator[str]:
    with own_pg_database("notify") as url:
        yield url


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.stop()


@pytest.fixture(scope="module")
def notify_worker(app: Any, notify_db: str, receiver: Receiver) -> Iterator[WorkerProcess]:
    env = worker_env(SAGA_EXTRA_MODULES="tests.support.sagas,tests.support.notify_sagas", SAGA_DATABASE_URL=notify_db,
                     SAGA_NOTIFY_WEBHOOK_URL=receiver.url, SAGA_NOTIFY_WEBHOOK_SECRET=SECRET,
                     SAGA_NOTIFY_WEBHOOK_TIMEOUT="2")
    w = WorkerProcess("notify", "notify", concurrency=2, env=env)
    try:
        w.wait_ready(app, timeout=60)
        yield w
    finally:
        w.stop()


@pytest.fixture
def rt(app: Any, notify_db: str, receiver: Receiver, notify_worker: WorkerProcess) -> Iterator[Runtime]:
    """This process's runtime on the module's database, with the same webhook (its sweeper delivers)."""
    settings = get_settings().model_copy(update={"database_url": notify_db, "notify_webhook_url": receiver.url,
                                                 "notify_webhook_secret": SecretStr(SECRET),
                                                 "notify_webhook_timeout": 2.0})
    with activate(Runtime(app=app, settings=settings)) as runtime:
        yield runtime


def settled(saga_id: str, state: str, rt: Runtime) -> None:
    wait_until(lambda: rt.store.get(saga_id).state == state, timeout=60, what=f"{saga_id} {state}")


def recorded(saga_id: str, n: int) -> list[NotificationView]:
    """The run's notifications once `n` are recorded and each was tried on the webhook once."""
    def ready() -> bool:
        found = list_notifications(saga_id=saga_id)
        return len(found) == n and all(x.attempts >= 1 for x in found)
    wait_until(ready, timeout=30, what=f"{n} notification(s) of {saga_id} tried")
    return list_notifications(saga_id=saga_id)


def test_a_webhook_down_for_a_while_gets_each_event_exactly_once_signed_and_nothing_twice(
        rt: Runtime, receiver: Receiver) -> None:
    # Given the webhook is down, a run whose step b runs out of retries (it ends COMPENSATED), and a
    # run whose b is refused and whose a's undo keeps failing (it ends FAILED)
    exhausted = start_saga("tests.notify_line", {"exhaust": "b"}, saga_id=new_id("notify-x"))
    failed = start_saga("tests.notify_line", {"refuse": "b", "stuck_undo": "a"}, saga_id=new_id("notify-f"))
    settled(exhausted, "COMPENSATED", rt)
    settled(failed, "FAILED", rt)

    # Then the worker recorded each event once and tried the webhook after each commit: refused
    [dl] = list_dead_letters("OPEN", saga_id=exhausted)
    [x] = recorded(exhausted, 1)
    assert (x.id, x.kind, x.state) == (f"dead_letter:{exhausted}:{dl.id}", "dead_letter", "PENDING")
    f = recorded(failed, 2)
    assert sorted(n.kind for n in f) == ["dead_letter", "failed"]
    events = [x, *f]
    assert all(n.attempt_log[-1].target == "webhook" and not n.attempt_log[-1].ok
               and "refused" in (n.attempt_log[-1].error or "") for n in events)

    # When sweeps come while it is still down: more failed attempts, kept, none delivered
    now = utcnow()
    for minutes in (2, 6, 12):
        assert sweep(rt, now + timedelta(minutes=minutes)).notifications_delivered == []
    assert all(n.attempts >= 2 for n in list_notifications(state="PENDING"))

    # When it comes back: the next sweep delivers each event once; later sweeps nothing more
    receiver.start()
    delivered = sweep(rt, now + timedelta(minutes=30)).notifications_delivered
    assert sorted(delivered) == sorted(n.id for n in events)
    for minutes in (60, 120):
        assert sweep(rt, now + timedelta(minutes=minutes)).notifications_delivered == []
    assert sorted(r.headers[ID_HEADER] for r in receiver.requests) == sorted(n.id for n in events)
    for r in receiver.requests:
        assert verify(SECRET, r.headers[TIMESTAMP_HEADER], r.raw, r.headers[SIGNATURE_HEADER])
        assert r.body["saga_type"] == "tests.notify_line" and r.body["saga_id"] in (exhausted, failed)

    # When the message of b's last attempt is delivered again, twice (a broker's redelivery)
    run = rt.store.load(exhausted)
    rt.app.send_task(dl.task_name, args=dl.args, kwargs=dl.kwargs, queue=dl.queue, headers=dl.headers,
                     task_id=run.step("b").task_id)
    rt.app.send_task(dl.task_name, args=dl.args, kwargs=dl.kwargs, queue=dl.queue, headers=dl.headers,
                     task_id=run.step("b").task_id)
    wait_until(lambda: sum(e.type in ("StaleMessageIgnored", "DuplicateIgnored") and e.step == "b"
                           for e in rt.store.get(exhausted).events) >= 2, timeout=30, what="both duplicates ignored")
    sweep(rt, now + timedelta(hours=3))

    # Then nothing is recorded or sent twice
    assert len(list_notifications(saga_id=exhausted)) == 1 and len(receiver.requests) == 3

    # And the console shows every event with every attempt
    app = create_app(rt.settings.model_copy(update={"api_token": TOKEN}), runtime=rt)
    with TestClient(app) as client:
        client.post("/console/login", data={"token": TOKEN, "next": "/console/"})
        page = client.get("/console/notifications")
    assert page.status_code == 200
    for n in list_notifications():
        assert f'data-notification="{n.id}"' in page.text and n.state == "DELIVERED"
        assert [a.ok for a in n.attempt_log if a.target == "webhook"] == [False] * (n.attempts - 1) + [True]
    assert page.text.count('data-attempt="webhook" data-ok="yes"') == 3
