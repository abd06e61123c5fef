"""RabbitMQ quorum queues (SAGA_BROKER_QUORUM_QUEUES): every queue replicated, countdowns in RabbitMQ.

The real-server tests run on a RabbitMQ node of their own (`tests/support/servers.py`: own node
name, port, data folder, no plugins), so restarting it (`rabbitmqctl stop_app` / `start_app`)
disturbs no one else's queues. A prefork worker declares the step, compensation, orchestrator and
event queues as quorum queues; a retry's countdown goes through Celery's native delayed delivery
(`celery_delayed_*` exchanges and queues, declared by the worker at start). Then HA_N order sagas
(150 here; `HA_N=500` for the issue's figures) run while the node restarts under them: every saga
terminal, every invariant of the chaos run kept (`tests/support/ha.py`).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from tests.support.workers import WorkerProcess, worker_env
from kombu import Exchange, Queue, binding

from tests.support.servers import RabbitNode, rabbitmq_node
from workflows.runtime.brokers import quorum, use_quorum_queues

N = int(os.environ.get("HA_N", "150"))
QUEUES = "saga,inventory,payment,shipping,notification,tests"


def test_a_quorum_queue_is_durable_on_a_topic_exchange_and_keeps_its_bindings() -> None:
    q = quorum(Queue("payment"))
    assert q.queue_arguments == {"x-queue-type": "quorum"} and q.durable
    assert (q.exchange.name, q.exchange.type, q.routing_key) == ("payment", "topic", "payment")
    events = Exchange("events", type="topic")
    bound = Queue("events.billing", bindings=[binding(events, routing_key="shop.OrderPlaced.billing")])
    bound.exchange, bound.routing_key = events, "shop.OrderPlaced.billing"
    q = quorum(bound)
    assert q.queue_arguments == {"x-queue-type": "quorum"}
    assert [b.routing_key for b in q.bindings] == ["shop.OrderPlaced.billing"] and q.exchange.name == "events"
    app = Celery("t")
    assert [x.name for x in use_quorum_queues(app, [Queue("saga"), Queue("tests")])] == ["saga", "tests"]
    assert app.conf.task_default_queue_type == "quorum" and app.conf.task_create_missing_queue_type == "quorum"


def test_on_quorum_queues_a_countdown_or_eta_is_rounded_up_to_whole_seconds() -> None:
    """Celery's native delayed delivery refuses a countdown under 1 s, and truncates the rest."""
    from datetime import datetime, timedelta, timezone

    from workflows.runtime.brokers import _whole_seconds

    sent: list[tuple[object, object]] = []
    send = _whole_seconds(lambda name, args, kwargs, countdown=None, eta=None, **o: sent.append((countdown, eta)))
    send("t", countdown=0.2)
    send("t", countdown=1.5)
    send("t", countdown=0)
    send("t", eta=datetime.now(timezone.utc) + timedelta(seconds=2.5))
    send("t", eta=datetime.now(timezone.utc) - timedelta(seconds=1))
    send("t")
    assert sent == [(1, None), (2, None), (None, None), (3, None), (None, None), (None, None)]


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    with rabbitmq_node() as n:
        yield n


@pytest.fixture(scope="module")
def quorum_worker(node: RabbitNode, app, tmp_path_factory) -> Iterator[tuple[WorkerProcess, Celery]]:  # type: ignore[no-untyped-def]
    # The session's app has built its routing table from the settings module's Queue objects (as any
    # earlier test that published through it did), which writes Celery's defaults into them: the
    # queues handed to use_quorum_queues below are those, alone or after the rest of the suite.
    app.amqp.queues  # noqa: B018
    client = Celery("tests-quorum")
    client.config_from_object("celeryconfig")
    client.conf.broker_url = node.url
    client.conf.broker_transport_options = {}
    client.conf.task_queues = use_quorum_queues(client, list(app.conf.task_queues))  # as the installed app's
    log = tmp_path_factory.mktemp("quorum") / "worker.log"
    w = WorkerProcess(f"quorum-{uuid.uuid4().hex[:6]}", QUEUES, concurrency=4, log=log,
                      env=worker_env(SAGA_BROKER_URL=node.url, SAGA_BROKER_QUORUM_QUEUES="1"))
    try:
        w.wait_ready(client, timeout=90)
        yield w, client
    finally:
        w.stop()


def test_every_queue_is_a_quorum_queue_and_a_retry_countdown_waits_in_rabbitmq(  # type: ignore[no-untyped-def]
        node: RabbitNode, quorum_worker, redis_client) -> None:
    from tests.support.amqp import start_through
    from workflows import wait_for
    from workflows.choreography import bus

    _, client = quorum_worker
    # Given a saga whose step b fails twice (retried after its policy's countdowns)
    saga_id = start_through(client, "tests.three", {"behaviour": {"b": {"fail_times": 2}}})
    # Then it completed, b on its third attempt
    assert wait_for(saga_id, timeout=60).state == "COMPLETED"
    effects = [e.decode() for e in redis_client.lrange(f"effects:{saga_id}", 0, -1)]
    assert effects == ["action:a:1", "action:b:1", "action:b:2", "action:b:3", "action:c:1"]
    # and every queue the worker consumes is a quorum queue, the delayed-delivery ones too
    types = node.queue_types()
    for name in QUEUES.split(","):
        assert types.get(name) == "quorum", (name, types)
    assert types.get("celery_delayed_0") == "quorum", types  # native delayed delivery is set up
    # and each queue is bound from its own exchange only (and the default exchange), so a message
    # sent to one queue reaches that queue alone
    for source, queue, key in node.bindings():
        if queue in QUEUES.split(","):
            assert source in ("", queue) and key in (queue, f"#.{queue}"), (source, queue, key)
    # (under the namespace the worker had: tests.support.choreo sets its own for the session once imported)
    events = [name for name in types if name.startswith(bus.namespace() + ".")]
    assert events and all(types[name] == "quorum" for name in events), types  # the choreography's queues


def test_sagas_survive_a_rabbitmq_restart_under_load(node: RabbitNode, quorum_worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.ha import Load

    worker, client = quorum_worker
    # Given N order sagas in flight on quorum queues
    load = Load(client, N)
    started_s = load.start()
    in_flight = load.not_terminal()
    # When RabbitMQ restarts (every connection dropped, the messages kept)
    restart_s = node.restart()
    # Then every saga ends terminal, each effect once
    t0 = time.monotonic()
    left = load.wait_terminal(bound=150)
    settled_s = time.monotonic() - t0
    figures, violations = load.check()
    figures.update(sagas_started=N, start_s=round(started_s, 1), in_flight_at_restart=in_flight,
                   restart_s=round(restart_s, 1), settled_after_restart_s=round(settled_s, 1))
    print(json.dumps(figures, indent=2, sort_keys=True, default=str))
    assert left == 0, f"{left} saga(s) not terminal; worker log: {worker.log.read_text()[-3000:]}"
    assert violations == [], "\n".join(violations[:30])
    assert in_flight > 0
    assert sum(figures["states"].get(s, 0) for s in ("COMPLETED", "COMPENSATED", "FAILED")) == N
