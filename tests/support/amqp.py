"""A real worker on RabbitMQ beside the suite's Redis one, and a client app to publish through it.

TEST_AMQP_URL names the broker (a vhost of its own keeps runs apart). The worker uses the suite's
PostgreSQL database, so a run started through RabbitMQ is read and checked as any other.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from tests.support.workers import WorkerProcess, worker_env
from kombu import Connection, Exchange, Queue

AMQP_URL = os.environ["TEST_AMQP_URL"]


def amqp_app() -> Celery:
    """The Celery app this process publishes through (and pings the RabbitMQ worker with)."""
    app = Celery("tests-amqp")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = AMQP_URL
    app.conf.broker_transport_options = {}
    return app


@contextmanager
def amqp_worker(name: str, queues: tuple[str, ...] = ("tests",), concurrency: int = 1,
                **env: str) -> Iterator[tuple[WorkerProcess, Celery]]:
    """A prefork worker on RabbitMQ consuming `queues`, emptied first; stopped at the end."""
    client = amqp_app()
    with Connection(AMQP_URL) as conn:
        for q in queues:
            Queue(q, Exchange(q), q, channel=conn.default_channel).declare()
            conn.default_channel.queue_purge(q)
    w = WorkerProcess(f"{name}-{uuid.uuid4().hex[:6]}", ",".join(queues), concurrency=concurrency,
                      env=worker_env(SAGA_BROKER_URL=AMQP_URL, **env))
    try:
        w.wait_ready(client, timeout=60)
        yield w, client
    finally:
        w.stop()


def start_through(client: Celery, saga: str, data: dict[str, Any]) -> str:
    """Start a run and publish its first step through `client` (start_saga publishes through the
    installed runtime's app, the suite's Redis)."""
    from tests.support.runs import create_run
    from workflows import get_runtime, registry
    from workflows.runtime.dispatch import CeleryDispatcher
    from workflows.runtime.sealing import seal_input

    rt = get_runtime()
    definition = registry.get(saga)
    clean = seal_input(rt.sealer, definition, definition.validate_input(data))  # as start_saga stores it
    created = create_run(rt.store, definition, clean, timing=rt.timing)
    assert created.state is not None and created.command is not None
    CeleryDispatcher(client).send_step(created.state, created.command)
    return created.saga_id
