"""The bus: a topic exchange, one durable queue per subscribing service, Celery task messages.

    exchange   <namespace>                       (topic, durable; namespace default "events")
    queue      <namespace>.<service>             (durable; consumed by the Celery task events.<service>)
    binding    <choreography>.<EventType>.<service>, one per event type the service handles
    message    task events.<service>(saga_id, event_type, event=<envelope>), Celery protocol, JSON

An event is delivered as one Celery task message per subscribing service, each with a routing
key that names its consumer. So every service, in whatever worker pool, gets its own copy; retries
(`self.retry(countdown=...)`), late acks and redelivery are Celery's own; and each message reaches
exactly one queue on every transport. That last point matters: kombu's Redis and filesystem
transports keep an exchange's type in the process that declared it, and re-route a requeued
message through the exchange again. Exact routing keys give the same result whether a process
routes as `topic` or as `direct`, so no copy vanishes and no requeue fans out a second time.
The publisher declares the queue and its binding with every send (cached per connection), so an
event published before any consumer ever started waits in its queue instead of being dropped.
The topic exchange still lets an operator tap the stream: bind a queue to `order_parallel.#` or
`*.PaymentFailed.*`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any
from collections.abc import Iterator

from celery import Celery
from kombu import Exchange, Queue, binding

from workflows.runtime.brokers import queue_arguments

_publisher: Celery | None = None


def namespace() -> str:
    """`SAGA_EVENT_NAMESPACE`: the exchange name and queue prefix (read on every use)."""
    return os.environ.get("SAGA_EVENT_NAMESPACE", "events")


def exchange() -> Exchange:
    return Exchange(namespace(), type="topic", durable=True)


def queue_name(service: str) -> str:
    return f"{namespace()}.{service}"


def task_name(service: str) -> str:
    """The Celery task that consumes `service`'s queue."""
    return f"events.{service}"


def routing_key(choreography: str, event_type: str, service: str) -> str:
    return f"{choreography}.{event_type}.{service}"


def delivery_queue(service: str, key: str, app: Any = None) -> Queue:
    """The queue a delivery goes to, with the binding it needs (declared by the publisher, of the type
    `app`'s workers declare it: a quorum queue with `SAGA_BROKER_QUORUM_QUEUES`)."""
    ex = exchange()
    return Queue(queue_name(service), ex, routing_key=key, durable=True, queue_arguments=queue_arguments(app))


def consumer_queue(service: str, routes: Iterable[tuple[str, str]]) -> Queue:
    """A service's queue with one binding per (choreography, event type) it handles."""
    ex = exchange()
    keys = [routing_key(c, t, service) for c, t in routes]
    q = Queue(queue_name(service), durable=True, bindings=[binding(ex, routing_key=k) for k in keys])
    q.exchange, q.routing_key = ex, keys[0]  # kombu drops the exchange of a queue with bindings
    return q


def publisher() -> Celery:
    """The Celery app events are sent through: the runtime's, unless `use_publisher` says otherwise.

    Raises `NoPublisher` when there is neither (a runtime built with app=None)."""
    if _publisher is not None:
        return _publisher
    from workflows.runtime.container import get_runtime

    app = get_runtime().app
    if app is None:
        raise NoPublisher("this runtime has no Celery app to send events with: build it with one, "
                          "or send through another inside `use_publisher(app)`")
    return app


def has_publisher() -> bool:
    """Whether `publisher()` has an app to send events with."""
    from workflows.runtime.container import get_runtime

    return _publisher is not None or get_runtime().app is not None


class NoPublisher(RuntimeError):
    """No Celery app to send choreography events with."""


@contextmanager
def use_publisher(app: Celery) -> Iterator[Celery]:
    """Send events through `app` (another broker) inside the block; for scripts and tests."""
    global _publisher
    old, _publisher = _publisher, app
    try:
        yield app
    finally:
        _publisher = old


def send(app: Celery, envelope: dict[str, Any], service: str, *, producer: Any = None) -> None:
    """Publish one delivery of `envelope` (wire form) to `service`'s queue."""
    key = routing_key(envelope["sagaType"], envelope["eventType"], service)
    app.send_task(task_name(service), args=[envelope["sagaId"], envelope["eventType"]],
                  kwargs={"event": envelope}, task_id=f"{envelope['eventId']}.{service}",
                  queue=delivery_queue(service, key, app), routing_key=key, producer=producer)
