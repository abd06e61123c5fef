"""Choreography test support: one cluster of service workers per broker, and what tests read back.

A `Cluster` runs four `celery -A worker worker` processes (prefork), each consuming the event
queue(s) of one service, against Redis (TEST_REDIS_URL) or RabbitMQ (TEST_AMQP_URL), all on the
suite's database. The event namespace (exchange, queue prefix, worker names) is
`test_choreo_<hash of the test database and Redis URLs>`, so nothing collides with a demo's
queues or with another test session on the same RabbitMQ; the queues are purged when a cluster
starts.
"""
from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


def _namespace() -> str:
    """Unique per test database and Redis: sessions run side by side share one RabbitMQ vhost."""
    import hashlib

    key = f"{os.environ.get('TEST_PG_URL', '')}|{os.environ.get('TEST_REDIS_URL', '')}"
    return f"test_choreo_{hashlib.sha1(key.encode()).hexdigest()[:8]}"


NAMESPACE = _namespace()
os.environ["SAGA_EVENT_NAMESPACE"] = NAMESPACE  # before any worker is started or event published

from sqlalchemy import select  # noqa: E402

from tests.support.workers import WorkerProcess, worker_env  # noqa: E402
from tests.support.interfaces import wait_until  # noqa: E402,F401 (the choreography tests import it from here)

POOLS = {  # worker name -> services whose queues it consumes (and its pool size)
    "orders": (["orders"], 1),
    "inventory": (["inventory"], 1),
    "payment": (["payment"], 2),
    "shipping": (["shipping", "notification"], 1),
}
SERVICES = ["orders", "inventory", "payment", "shipping", "notification"]


def purge_event_queues(url: str, services: Iterable[str]) -> None:
    """Declare the event queues of `services` on the broker at `url` and empty them: nothing an
    earlier module or run left there reaches this one's workers."""
    from kombu import Connection

    from workflows.choreography import choreographies
    from workflows.choreography.bus import consumer_queue

    wanted = set(services)
    with Connection(url) as conn:
        ch = conn.channel()
        for service, routes in choreographies.routes().items():
            if service in wanted:
                q = consumer_queue(service, routes)(ch)
                q.declare()
                q.purge()


@contextmanager
def rabbitmq_workers(app: Any, name: str, event_services: Iterable[str], step_queues: str, *,
                     timeout: float = 60, **env: str) -> Iterator[None]:
    """Two workers on RabbitMQ, this session's event namespace and `env`: one consuming the event
    queues of `event_services` (emptied first of what an earlier module or run left), one the step
    queues `step_queues`; both ready (pinged through `app`) before the body runs, stopped after it."""
    from workflows.choreography import queue_name

    services = list(event_services)
    purge_event_queues(broker_url("amqp"), services)
    environment = worker_env(SAGA_BROKER_URL=broker_url("amqp"), SAGA_EVENT_NAMESPACE=NAMESPACE, **env)
    started = [WorkerProcess(f"{NAMESPACE}-{name}-events", ",".join(queue_name(s) for s in services), env=environment),
               WorkerProcess(f"{NAMESPACE}-{name}-steps", step_queues, env=environment)]
    try:
        for w in started:
            w.wait_ready(app, timeout=timeout)
        yield
    finally:
        for w in started:
            w.stop()


def broker_url(kind: str) -> str:
    return os.environ["TEST_REDIS_URL"] if kind == "redis" else os.environ["TEST_AMQP_URL"]


def client_app(kind: str):  # type: ignore[no-untyped-def]
    """The Celery app this process publishes through and pings workers with, for `kind`."""
    import worker

    if kind == "redis":
        return worker.app
    from celery import Celery

    app = Celery("choreo-tests-amqp")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = broker_url(kind)
    app.conf.broker_transport_options = {}
    return app


class Cluster:
    """The service worker pools of one broker. `restart(pool, **env)` swaps one pool."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.url = broker_url(kind)
        self.app = client_app(kind)
        self.workers: dict[str, WorkerProcess] = {}

    def env(self, **extra: str) -> dict[str, str]:
        return worker_env(SAGA_BROKER_URL=self.url, SAGA_EVENT_NAMESPACE=NAMESPACE, **extra)

    def start(self) -> Cluster:
        self.purge()
        for pool in POOLS:
            self._spawn(pool)
        for w in self.workers.values():
            w.wait_ready(self.app, timeout=60)
        return self

    def _spawn(self, pool: str, **extra: str) -> WorkerProcess:
        from workflows.choreography import queue_name

        services, concurrency = POOLS[pool]
        w = WorkerProcess(f"{NAMESPACE}-{self.kind}-{pool}", ",".join(queue_name(s) for s in services),
                          concurrency=concurrency, env=self.env(**extra))
        self.workers[pool] = w
        return w

    def restart(self, pool: str, **extra: str) -> WorkerProcess:
        """Stop `pool` and start it again with `extra` environment (a fault switch, or none)."""
        self.workers[pool].stop()
        w = self._spawn(pool, **extra)
        w.wait_ready(self.app, timeout=60)
        return w

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()

    def purge(self, *services: str) -> None:
        """Empty the event queues of `services` (default: all), declaring them first."""
        purge_event_queues(self.url, services or SERVICES)

    def dead_letter_ids(self) -> set[str]:
        """Dead-letter ids on the broker's `dead_letter` queue, read without removing anything."""
        bodies: list[Any] = []
        if self.kind == "redis":
            import redis

            for raw in redis.Redis.from_url(self.url).lrange("dead_letter", 0, -1):
                m = json.loads(raw)
                body = m["body"]
                if m["properties"].get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                bodies.append(json.loads(body))
        else:
            from kombu import Connection

            with Connection(self.url) as conn:
                ch = conn.channel()
                got = []
                while (m := ch.basic_get("dead_letter", no_ack=False)) is not None:
                    got.append(m)
                    bodies.append(json.loads(m.body))
                for m in got:
                    ch.basic_reject(m.delivery_tag, requeue=True)
        return {b.get("dead_letter_id") for b in bodies if isinstance(b, dict)}


# ------------------------------------------------------------------ reading back


def settle(saga_id: str, timeout: float = 30.0, states: tuple[str, ...] = ("COMPLETED", "COMPENSATED", "FAILED")):  # type: ignore[no-untyped-def]
    """The saga once it reached one of `states` (terminal by default); TimeoutError otherwise."""
    from workflows import get_saga

    deadline = time.monotonic() + timeout
    while True:
        view = get_saga(saga_id)
        if view.state in states:
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"saga {saga_id} is {view.state} after {timeout}s: {history(saga_id)}")
        time.sleep(0.05)


def history(saga_id: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    from workflows import get_saga

    return [(e.type, e.step, e.detail) for e in get_saga(saga_id).events]


def published(saga_id: str) -> list[str]:
    """Event types published in the saga, in order."""
    return [step for t, step, _ in history(saga_id) if t == "EventPublished"]  # type: ignore[misc]


def handled(saga_id: str) -> list[tuple[str, str]]:
    """(event type, consumer) of every handled delivery, in order."""
    return [(step, d["consumer"]) for t, step, d in history(saga_id) if t == "EventHandled"]  # type: ignore[misc]


def effects(saga_id: str) -> dict[str, list[str]]:
    from tasks.common import effects_of

    return effects_of(saga_id)


def outbox(saga_id: str) -> list[tuple[str, str, bool]]:
    """(event type, source, sent) of the saga's outbox rows, in order."""
    from tasks.common import transaction
    from workflows.store.models import OutboxRow

    with transaction() as s:
        return [(r.event_type, r.source, r.sent_at is not None) for r in
                s.scalars(select(OutboxRow).where(OutboxRow.saga_id == saga_id).order_by(OutboxRow.id))]


def envelope_of(saga_id: str, event_type: str) -> dict[str, Any]:
    from tasks.common import transaction
    from workflows.store.models import OutboxRow

    with transaction() as s:
        row = s.scalars(select(OutboxRow).where(OutboxRow.saga_id == saga_id, OutboxRow.event_type == event_type)
                        .order_by(OutboxRow.id)).first()
        assert row is not None, f"no {event_type} in saga {saga_id}"
        return dict(row.envelope)


def order(**overrides: Any) -> dict[str, Any]:
    """A valid order with a fresh id and its own SKU stocked with 10 units (2 ordered)."""
    import uuid

    from tasks.inventory import restock

    oid = uuid.uuid4().hex[:10]
    sku = f"SKU-C-{oid}"
    restock({sku: 10})
    o = {"order_id": f"order-{oid}", "customer_id": "cust-1", "email": "c@example.com",
         "items": [{"sku": sku, "quantity": 2, "price": "12.50"}], "payment": {"card": "4242424242424242"},
         "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}
    o.update(overrides)
    return o


DECLINED = {"payment": {"card": "4000000000000002"}}
UNSERVED = {"shipping_address": {"name": "Nemo", "street": "1 Deep Rd", "city": "Atlantis", "country": "XX"}}


def sold_out() -> dict[str, Any]:
    from tasks.inventory import restock

    restock({"SKU-C-SOLD-OUT": 0})
    return {"items": [{"sku": "SKU-C-SOLD-OUT", "quantity": 1, "price": "5.00"}]}

