"""Poison messages of every kind, on Redis and on RabbitMQ (issue 20): none stops a worker; each is
a dead letter (kind "message") with its raw bytes and the reason, and the worker goes on.

Each message is published with kombu straight onto the `tests` queue a real worker (prefork)
consumes: a body that is not JSON, JSON that is not a task message, a task message in the wrong
content type (pickle), a task no worker has, and a step message whose arguments do not fit the step
message's schema. (A Redis list entry that is not even a kombu envelope is in tests/servers/test_poison.py.)
"""
from __future__ import annotations

import base64
import os
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from tests.support.workers import WorkerProcess
from kombu import Connection, Exchange, Queue

from tests.support.amqp import AMQP_URL, amqp_worker, start_through
from tests.support.interfaces import wait_until
from workflows import wait_for
from workflows.operations.dead_letters import list_dead_letters

@pytest.fixture(scope="module")
def rabbitmq_worker(app) -> Iterator[tuple[WorkerProcess, Celery]]:  # type: ignore[no-untyped-def]
    with amqp_worker("poison-amqp") as started:
        yield started


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request) -> tuple[str, WorkerProcess, Celery]:  # type: ignore[no-untyped-def]
    if request.param == "redis":
        import worker

        return os.environ["TEST_REDIS_URL"], request.getfixturevalue("running_worker"), worker.app
    w, client = request.getfixturevalue("rabbitmq_worker")
    return AMQP_URL, w, client


def task_headers(task: str) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
            "retries": 0, "eta": None, "expires": None, "timelimit": [None, None], "origin": "poison-test"}


def poison(kind: str, marker: str) -> tuple[bytes, str, dict[str, Any] | None, str]:
    """(body, content type, headers, the reason its dead letter gives) of a poison message of `kind`."""
    if kind == "not JSON":
        return b"\x00\xffnot json{{{" + marker.encode(), "application/json", None, "cannot be decoded"
    if kind == "not a task message":
        return f'{{"hello": "{marker}"}}'.encode(), "application/json", None, "is not a Celery task message"
    if kind == "wrong content type":
        return (pickle.dumps([[marker], {}, {}]), "application/x-python-serialize", task_headers("tests.action"),
                "ContentDisallowed")
    if kind == "unknown task":
        return (f'[["{marker}"], {{}}, {{}}]'.encode(), "application/json", task_headers("nobody.here"),
                "no task 'nobody.here' is registered")
    if kind == "failing the message schema":
        return (f'[["{marker}", "a"], {{"saga": 7, "kind": "sideways"}}, {{}}]'.encode(), "application/json",
                task_headers("tests.action"), "does not fit its schema")
    raise AssertionError(kind)


def publish(url: str, body: bytes, content_type: str, headers: dict[str, Any] | None) -> None:
    with Connection(url) as conn:
        producer = conn.Producer()
        producer.publish(body, exchange="", routing_key="tests", content_type=content_type,
                         content_encoding="binary" if content_type != "application/json" else "utf-8",
                         headers=headers or {}, declare=[Queue("tests", Exchange("tests"), "tests")])


@pytest.mark.parametrize("kind", ["not JSON", "not a task message", "wrong content type", "unknown task",
                                  "failing the message schema"])
def test_a_poison_message_is_dead_lettered_with_its_raw_bytes_and_the_worker_goes_on(broker, kind):  # type: ignore[no-untyped-def]
    url, worker_process, client = broker
    marker = f"poison-{uuid.uuid4().hex[:10]}"
    body, content_type, headers, reason = poison(kind, marker)

    # When the message is published onto the queue the worker consumes
    publish(url, body, content_type, headers)

    # Then it is a dead letter with its exact bytes and the reason
    def found():  # type: ignore[no-untyped-def]
        return [d for d in list_dead_letters(limit=2000) if d.kind == "message" and marker in d.kwargs.get("raw", "")]

    [dl] = wait_until(found, 30, f"the {kind} message was not dead-lettered")
    assert reason in dl.exception, dl.exception
    assert dl.exception.startswith("UndecodableMessage: ") and dl.saga_id is None
    if kind != "failing the message schema":  # that one is kept as the task saw it: its args and kwargs
        assert base64.b64decode(dl.kwargs["raw_base64"]) == body
    else:
        assert '"kind": "sideways"' in dl.kwargs["raw"] and dl.task_name == "tests.action"
        for problem in ("saga: Input should be a valid string", "kind: Input should be 'action' or 'compensation'",
                        "version: Field required", "input: Field required"):
            assert problem in dl.exception, dl.exception

    # And the worker is still there: a saga on the same queue, through the same broker, completes
    assert worker_process.proc.poll() is None
    assert wait_for(start_through(client, "tests.three", {}), timeout=60).state == "COMPLETED"
    assert worker_process.proc.poll() is None
