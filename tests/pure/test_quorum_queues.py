"""Quorum queues (`runtime.brokers.quorum`) from Queue objects a Celery app already routed through.

Celery writes its defaults into a plain `Queue` when an app builds its routing table from it
(`app.amqp.queues`): the exchange becomes `task_default_exchange` and the routing key
`task_default_routing_key`. Every app configured from one settings module shares those objects,
so after a first app published, a second one (a quorum client, a web process's own app) sees
queues all on the exchange `saga` with the key `saga`. Declared that way, every step queue was
bound to one exchange with one key, and a message to one queue went to all of them (the
duplicate deliveries of issue #32). No broker here: the declarations are read, not declared.
"""
from __future__ import annotations

from celery import Celery
from kombu import Queue

from workflows.runtime.brokers import use_quorum_queues

NAMES = ("saga", "inventory", "payment", "shipping", "notification")


def test_a_queue_an_app_already_routed_through_gets_its_own_topic_exchange_and_key() -> None:
    # Given the queues of a settings module, which a first app built its routing table from
    shared = [Queue(name) for name in NAMES]
    first = Celery("first", set_as_current=False)
    first.conf.update(task_queues=shared, task_default_queue="saga")
    first.amqp.queues  # noqa: B018  (what its first publish does)
    assert {(q.exchange.name, q.routing_key) for q in shared} == {("saga", "saga")}  # Celery's defaults, in place
    # When a second app declares the same queues as quorum queues
    second = Celery("second", set_as_current=False)
    second.conf.update(task_default_queue="saga")
    queues = use_quorum_queues(second, shared)
    second.conf.task_queues = queues
    # Then each queue is on a topic exchange of its own name, bound with its own name
    assert [(q.name, q.exchange.name, q.exchange.type, q.routing_key) for q in queues] == [
        (name, name, "topic", name) for name in NAMES]
    assert all(q.queue_arguments == {"x-queue-type": "quorum"} and q.durable for q in queues)
    # and a task sent to one queue is published to that queue's exchange with that queue's key
    route = second.amqp.router.route({"queue": "inventory"}, "inventory.reserve")
    assert (route["queue"].exchange.name, route["queue"].routing_key) == ("inventory", "inventory")


def test_a_queue_on_a_topic_exchange_keeps_it() -> None:
    from kombu import Exchange

    shop = Exchange("shop", type="topic", durable=True)
    (q,) = use_quorum_queues(Celery("t", set_as_current=False), [Queue("payment", shop, routing_key="pay.#")])
    assert (q.exchange.name, q.exchange.type, q.routing_key) == ("shop", "topic", "pay.#")
