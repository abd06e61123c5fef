"""What a highly available broker asks of the app: Redis with Sentinel, RabbitMQ quorum queues.

**Sentinel** (`sentinel://host:26379;sentinel://...`): kombu's Sentinel transport asks the sentinels
for the master named by the transport option `master_name` (`SAGA_BROKER_MASTER_NAME`), and asks
again after a failover. Without the name kombu fails only at the first connection, deep in a
worker's start; `check_sentinel` refuses it when the app is installed.

**Quorum queues** (`SAGA_BROKER_QUORUM_QUEUES`, RabbitMQ): `use_quorum_queues` declares every
queue of the app (the orchestrator's, one per step queue, one per choreography service) with
`x-queue-type: quorum` on a topic exchange, and sets Celery's defaults so queues it creates by
itself are quorum queues too. Celery (5.5+) then sees the quorum queues and publishes a message
with a countdown (a retry, a hand-off) through RabbitMQ's native delayed delivery (`celery_delayed_*`
exchanges, which the worker declares and binds its queues to at start): the message waits in
RabbitMQ, not in a worker's memory. Native delayed delivery needs a topic (or fanout) exchange; with
a direct one Celery would fall back to holding the message in the worker. A quorum queue refuses a
global QoS, which Celery detects and turns off itself.

Two gaps of Celery 5.7 closed here:
* its delayed delivery takes whole seconds, and refuses a countdown (or an eta) under one second
  (kombu's `calculate_routing_key`: "countdown must be a positive number"), which fails a retry
  after 0.2 s. `use_quorum_queues` rounds every countdown and eta of the app up to the next whole
  second (`_whole_seconds`): a retry may wait up to a second longer than its policy asks, never less.
* at start the worker binds every queue of the app to the delayed-delivery exchange, and a queue no
  one declared yet (a step queue this worker does not consume, a choreography service's) fails the
  binding, which turns delayed delivery off for the whole worker. `DelayedDelivery` declares each
  queue (with its exchange and bindings) before binding it; `runtime.poison.Consumer` uses it.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from celery.worker.consumer.delayed_delivery import DelayedDelivery as CeleryDelayedDelivery
from kombu import Exchange, Queue
from kombu.common import Broadcast

QUORUM = {"x-queue-type": "quorum"}


def scheme(broker_url: str) -> str:
    return broker_url.split("://", 1)[0].split("+", 1)[0]


def is_amqp(broker_url: str) -> bool:
    return scheme(broker_url) in ("amqp", "amqps", "pyamqp", "librabbitmq")


def check_sentinel(broker_url: str, transport_options: dict[str, Any]) -> None:
    """Refuse a sentinel:// broker without the master's name, saying which setting gives it."""
    if scheme(broker_url) == "sentinel" and not transport_options.get("master_name"):
        raise ValueError("the broker URL is sentinel://... but no master name is set: set SAGA_BROKER_MASTER_NAME "
                         "(the name in the sentinels' `sentinel monitor <name> ...`), or the Celery transport "
                         "option broker_transport_options['master_name']")


def quorum(queue: Queue) -> Queue:
    """`queue` declared as a durable quorum queue. A queue on a direct exchange (or none) gets a
    topic exchange of its own name, bound with its own name (native delayed delivery needs a topic
    exchange); a queue with explicit bindings (a choreography service's) keeps them, and one on a
    topic or fanout exchange keeps it.

    A direct queue's exchange and routing key are not read: a Celery app that already built its
    routing table from this very `Queue` object (any app configured from the same settings module
    in this process, once it published) has written its defaults into it, `task_default_exchange`
    and `task_default_routing_key` ("saga" both). Kept, they bound every step queue to the one
    exchange `saga` with the key `saga`, and a message sent to one queue went to all of them."""
    arguments = {**(getattr(queue, "queue_arguments", None) or {}), **QUORUM}
    if queue.bindings:
        q = Queue(queue.name, durable=True, bindings=list(queue.bindings), queue_arguments=arguments)
        q.exchange, q.routing_key = queue.exchange, queue.routing_key  # kombu drops it with bindings
        return q
    exchange = queue.exchange
    if exchange is None or not exchange.name or exchange.type == "direct":
        return Queue(queue.name, Exchange(queue.name, type="topic", durable=True), routing_key=queue.name,
                     durable=True, queue_arguments=arguments)
    return Queue(queue.name, exchange, routing_key=queue.routing_key or queue.name, durable=True,
                 queue_arguments=arguments)


def use_quorum_queues(app: Any, queues: list[Queue]) -> list[Queue]:
    """Declare `queues` (the app's task queues) as quorum queues, and make Celery's own defaults
    (the default queue, queues it creates when missing) quorum queues on topic exchanges."""
    app.conf.task_default_queue_type = "quorum"
    app.conf.task_create_missing_queue_type = "quorum"
    app.conf.task_default_exchange_type = "topic"
    app.conf.task_create_missing_queue_exchange_type = "topic"
    app.conf.worker_detect_quorum_queues = True
    if not getattr(app.send_task, "whole_seconds", False):
        app.send_task = _whole_seconds(app.send_task)
    return [quorum(q) for q in queues]


def _whole_seconds(send_task: Callable[..., Any]) -> Callable[..., Any]:
    """`send_task` with a countdown or eta rounded up to a whole number of seconds from now (an eta
    becomes a countdown; one already due, none)."""

    @functools.wraps(send_task)
    def send(name: str, args: Any = None, kwargs: Any = None, countdown: float | None = None,
             eta: datetime | str | None = None, **options: Any) -> Any:
        if eta is not None:
            when = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            countdown, eta = (when - datetime.now(timezone.utc)).total_seconds(), None
        if countdown is not None:
            countdown = math.ceil(countdown) if countdown > 0 else None
        return send_task(name, args, kwargs, countdown=countdown, eta=eta, **options)

    send.whole_seconds = True  # type: ignore[attr-defined]
    return send


class DelayedDelivery(CeleryDelayedDelivery):  # type: ignore[misc]  # celery is untyped
    """Celery's native delayed delivery, declaring each queue before binding it to the delayed exchange."""

    def _bind_queues(self, app: Any, connection: Any) -> None:
        channel = connection.default_channel
        for queue in app.amqp.queues.values():
            if not isinstance(queue, Broadcast):
                queue.bind(channel).declare()
        super()._bind_queues(app, connection)


def uses_quorum_queues(app: Any) -> bool:
    """Whether `app` declares its queues as quorum queues (`use_quorum_queues`)."""
    return getattr(app, "conf", None) is not None and app.conf.task_default_queue_type == "quorum"


def queue_arguments(app: Any) -> dict[str, Any] | None:
    """The arguments a queue this library declares by itself (the dead-letter queue, an event queue
    its publisher declares) needs on `app`'s broker: the same type as the worker declares."""
    return dict(QUORUM) if uses_quorum_queues(app) else None
