"""Flower watching the real Redis broker finds every task of a saga by the saga's id.

Given Flower (`celery -A worker flower`, its HTTP API opened with FLOWER_UNAUTHENTICATED_API)
receiving the task events of a real worker, when an order saga runs, then Flower's task search
by the saga id returns that saga's tasks, each named readably, with the saga id as its first
argument and the step as its second.
"""
from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.interfaces import stop_process_group
from workflows import start_saga, wait_for

pytestmark = pytest.mark.usefixtures("running_worker")

ROOT = Path(__file__).resolve().parents[2]
ORDER_TASKS = {"inventory.reserve", "payment.charge", "shipping.create",
               "notification.send_confirmation"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(fetch, timeout: float = 30.0, every: float = 0.25):  # type: ignore[no-untyped-def]
    """`fetch()` until it returns something truthy; its last error or value explains a timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = fetch()
        except httpx.TransportError as e:
            value, last = None, e
        if value:
            return value
        last = value if value is not None else last
        time.sleep(every)
    raise TimeoutError(f"not seen within {timeout}s (last: {last!r})")


@contextmanager
def running_flower(*, unauthenticated_api: bool, basic_auth: str | None = None) -> Iterator[httpx.Client]:
    """`celery -A worker flower` on a free loopback port, against this session's broker."""
    port = free_port()
    log = Path(f"/tmp/saga-test-flower-{os.getpid()}-{port}.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env["PYTHONPATH"] = str(ROOT)
    if unauthenticated_api:
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    if basic_auth:
        env["FLOWER_BASIC_AUTH"] = basic_auth  # what docker-compose.yml sets
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
                             "--address=127.0.0.1"], cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:
        def alive() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"flower exited: {log.read_text()[-2000:]}")
            return client.get("/healthcheck").status_code == 200

        poll(alive)
        yield client
    finally:
        client.close()
        stop_process_group(proc)


@pytest.fixture
def flower(app) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with running_flower(unauthenticated_api=True) as client:
        # Flower's event receiver is live once it has seen the worker's heartbeat (an event).
        host = os.uname().nodename
        poll(lambda: f'flower_worker_online{{worker="main@{host}"}} 1.0' in client.get("/metrics").text)
        yield client


def test_flower_api_answers_401_without_auth_or_flower_unauthenticated_api(app):  # type: ignore[no-untyped-def]
    with running_flower(unauthenticated_api=False) as closed:
        r = closed.get("/api/tasks", params={"limit": 1})

    assert r.status_code == 401
    assert "FLOWER_UNAUTHENTICATED_API" in r.text


def test_flower_api_with_basic_auth_answers_only_with_the_credentials(app):  # type: ignore[no-untyped-def]
    with running_flower(unauthenticated_api=False, basic_auth="ops:s3cret") as guarded:
        anonymous = guarded.get("/api/tasks", params={"limit": 1})
        wrong = guarded.get("/api/tasks", params={"limit": 1}, auth=("ops", "nope"))
        right = guarded.get("/api/tasks", params={"limit": 1}, auth=("ops", "s3cret"))

    assert anonymous.status_code == wrong.status_code == 401
    assert right.status_code == 200 and isinstance(right.json(), dict)


def test_flower_finds_every_task_of_a_saga_by_its_id(flower, order_factory):  # type: ignore[no-untyped-def]
    saga_id = start_saga("order_fulfillment", order_factory())
    other = start_saga("order_fulfillment", order_factory())

    assert wait_for(saga_id, timeout=30).state == "COMPLETED"
    assert wait_for(other, timeout=30).state == "COMPLETED"

    def found() -> dict | None:  # type: ignore[type-arg]
        r = flower.get("/api/tasks", params={"search": saga_id})
        r.raise_for_status()
        tasks = r.json()
        names = {t["name"] for t in tasks.values()}
        done = all(t["state"] == "SUCCESS" for t in tasks.values())
        return tasks if names == ORDER_TASKS and done else None

    tasks = poll(found)

    assert len(tasks) == len(ORDER_TASKS)  # one task per step: nothing of the other saga
    for task in tasks.values():
        args = ast.literal_eval(task["args"])  # Flower shows the repr Celery put in the event
        assert args[0] == saga_id
        assert args[1] in ("reserve_inventory", "process_payment", "create_shipment", "send_confirmation")
        assert other not in task["args"]
        kwargs = ast.literal_eval(task["kwargs"])  # the dispatcher's own repr (short_repr), whole
        assert kwargs["saga"] == "order_fulfillment" and kwargs["kind"] == "action"
        assert kwargs["input"]["order_id"].startswith("order-")
    by_field = flower.get("/api/tasks", params={"search": f"args:{saga_id}", "taskname": "payment.charge"}).json()
    assert [t["name"] for t in by_field.values()] == ["payment.charge"]
    assert flower.get(f"/api/task/info/{next(iter(by_field))}").json()["args"].startswith(f"['{saga_id}'")


def test_flower_shows_inline_steps_as_tasks_of_their_own(flower):  # type: ignore[no-untyped-def]
    # tests.three's steps share the queue "tests": b and c run inline, in the delivery of a's message
    saga_id = start_saga("tests.three", {})
    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPLETED"

    def found() -> dict | None:  # type: ignore[type-arg]
        tasks = flower.get("/api/tasks", params={"search": saga_id}).json()
        done = len(tasks) == 3 and all(t["state"] == "SUCCESS" for t in tasks.values())
        return tasks if done else None

    tasks = poll(found)

    # each step is a task under its own task id (the id its dispatch recorded), saga id first
    assert set(tasks) == {s.task_id for s in view.steps}
    assert sorted(ast.literal_eval(t["args"])[1] for t in tasks.values()) == ["a", "b", "c"]
    assert all(ast.literal_eval(t["args"])[0] == saga_id for t in tasks.values())


def test_flower_finds_a_child_sagas_tasks_by_the_childs_id(flower, order_factory):  # type: ignore[no-untyped-def]
    from workflows import child_id, get_saga

    # Given a checkout that runs the shipping saga as its child
    saga_id = start_saga("order_with_shipping", order_factory())
    assert wait_for(saga_id, timeout=30).state == "COMPLETED"
    kid_id = child_id(saga_id, "shipping")
    assert get_saga(kid_id).parent_id == saga_id  # the child row names its parent

    def found(search: str, names: set[str]) -> dict | None:  # type: ignore[type-arg]
        tasks = flower.get("/api/tasks", params={"search": search}).json()
        done = all(t["state"] == "SUCCESS" for t in tasks.values())
        return tasks if {t["name"] for t in tasks.values()} == names and done else None

    # Then the child's task carries the child's id first; the parent's carry the parent's
    kid_tasks = poll(lambda: found(kid_id, {"shipping.create"}))
    assert [ast.literal_eval(t["args"]) for t in kid_tasks.values()] == [[kid_id, "create_shipment"]]
    parent_tasks = poll(lambda: found(saga_id, {"inventory.reserve", "payment.charge",
                                                "notification.send_confirmation"}))
    assert all(ast.literal_eval(t["args"])[0] == saga_id for t in parent_tasks.values())


def test_a_step_messages_kwargs_repr_is_cut_at_celerys_limit() -> None:
    from workflows.runtime.dispatch import REPR_LIMIT, short_repr

    small = {"saga": "s", "input": {"order_id": "o-1"}}
    assert short_repr(small) == repr(small)
    big = {"saga": "s", "input": {"blob": "x" * 5000}}
    cut = short_repr(big)
    assert len(cut) == REPR_LIMIT and cut.startswith("{'saga': 's', 'input': {'blob': 'xxx") and cut.endswith("...")
