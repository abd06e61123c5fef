"""A known card number through the example shop on the real servers, found nowhere in clear.

Given a worker (its log at DEBUG: Celery then logs every task's arguments), Flower watching the
task events, and a capture of every command Redis (the broker) receives, when orders paid with one
known card complete, are compensated, and are dead-lettered then redriven through the API, then the
card is in no table (`pg_dump`), no log (the worker's, the API's), no Redis command, no task Flower
saw, no API answer and no console page; and the payment step charged it (its result names the
card's last four digits). The in-process tier's version is tests/inprocess/test_sealed_fields.py.
"""
from __future__ import annotations

import base64
import json
import logging
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tasks.common import arm_fault
from tests.support.databases import libpq_url
from tests.support.interfaces import stop_process_group, wait_until
from tests.support.workers import ROOT, WorkerProcess, worker_env
from workflows import wait_for
from workflows.core.sealed import is_sealed
from workflows.interfaces.api import create_app
from workflows.runtime.settings import get_settings

TOKEN = "sealed-fields-token"
QUEUES = "saga,inventory,payment,shipping,notification"


def a_card() -> str:
    """A card number no other test uses (16 digits, not a declined one)."""
    return "49" + "".join(random.choice("0123456789") for _ in range(14))


@pytest.fixture
def monitor(broker: str, tmp_path: Path) -> Iterator[Path]:
    """Every command Redis receives, from any client, while the test runs (`MONITOR`)."""
    out = tmp_path / "redis-monitor.log"
    host, port = re.match(r"redis://([^:/]+):(\d+)", broker).groups()  # type: ignore[union-attr]
    proc = subprocess.Popen(["redis-cli", "-h", host, "-p", port, "monitor"], stdout=out.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: out.read_text().startswith("OK"), timeout=10, what="redis MONITOR started")
    try:
        yield out
    finally:
        stop_process_group(proc, grace=5)


@pytest.fixture
def sealed_worker(app, tmp_path: Path) -> Iterator[WorkerProcess]:  # type: ignore[no-untyped-def]
    """A worker of the example shop logging at DEBUG (Celery logs each task's arguments), with task events."""
    w = WorkerProcess("sealed", QUEUES, concurrency=2, log=tmp_path / "worker.log", loglevel="DEBUG",
                      env=worker_env(SAGA_LOG_LEVEL="DEBUG"), args=("--task-events",))
    try:
        w.wait_ready(app, timeout=60)
        yield w
    finally:
        w.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def flower(app, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Flower on the test broker, its API open on a local port."""
    port = free_port()
    log = tmp_path / "flower.log"
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
                             "--address=127.0.0.1"], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=worker_env(FLOWER_UNAUTHENTICATED_API="true"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/healthcheck", timeout=1).status == 200  # type: ignore[no-any-return]
        except OSError:
            return False

    try:
        wait_until(up, timeout=60, what=f"flower up ({log})")
        yield url
    finally:
        stop_process_group(proc, grace=5)


def test_a_known_card_is_charged_and_found_nowhere_in_clear(  # type: ignore[no-untyped-def]
        database, order_factory, monitor, sealed_worker, flower, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # this process is the API's: everything it logs
    card = a_card()
    client = TestClient(create_app(get_settings().model_copy(update={"api_token": TOKEN})))
    client.headers["Authorization"] = f"Bearer {TOKEN}"

    def start(order: dict) -> str:  # type: ignore[type-arg]
        r = client.post("/api/sagas/order_fulfillment", json=order)
        assert r.status_code in (200, 201, 202), r.text
        return str(r.json()["saga_id"])

    # Given orders paid with one known card: completed, compensated, dead-lettered then redriven
    completed = start(order_factory(payment={"card": card}))
    assert wait_for(completed, timeout=60).state == "COMPLETED"
    too_much = order_factory(payment={"card": card})
    too_much["items"][0]["price"] = "9999.99"  # over the card's limit: declined, the stock released
    compensated = start(too_much)
    assert wait_for(compensated, timeout=60).state == "COMPENSATED"
    arm_fault("shipping", times=1, permanent=True)  # the shipment fails: the charge is refunded ...
    arm_fault("payment", times=1, permanent=True, operation="compensation")  # ... whose refund fails once
    failed = start(order_factory(payment={"card": card}))
    assert wait_for(failed, timeout=60).state == "FAILED"
    [dl] = client.get("/api/dead-letters", params={"saga_id": failed}).json()
    assert client.post(f"/api/dead-letters/{dl['id']}/redrive", json={"reason": "gateway back"}).status_code == 200
    assert wait_for(failed, timeout=60).state == "COMPENSATED"

    # Then the steps charged the card (their result names its last four digits) ...
    for saga_id in (completed, failed):
        [charge] = [s for s in wait_for(saga_id).steps if s.name == "process_payment"]
        assert charge.result is not None and charge.result["card_last4"] == card[-4:]
    # ... the store holds envelopes ...
    from workflows import get_runtime
    assert is_sealed(get_runtime().store.load(completed).input["payment"]["card"])

    # ... the readers see a mask: the API, the console's pages
    pages = [client.get(p).text for p in (f"/api/sagas/{completed}", f"/api/sagas/{failed}/status", "/api/sagas",
                                          f"/api/dead-letters/{dl['id']}", "/api/dead-letters?status=ALL")]
    console = TestClient(create_app(get_settings().model_copy(update={"api_token": TOKEN})))
    assert console.post("/console/login", data={"token": TOKEN, "next": "/console/"},
                        follow_redirects=False).status_code == 303
    pages += [console.get(p).text for p in ("/console/", f"/console/sagas/{completed}", f"/console/sagas/{failed}",
                                            f"/console/dead-letters/{dl['id']}", "/console/dead-letters?status=ALL")]
    assert all("sealed (" in p for p in (pages[0], pages[6]))  # the input is shown, masked
    # ... Flower saw the tasks (their arguments sealed)
    tasks = wait_until(lambda: _flower_tasks(flower, completed), timeout=30, what="flower saw the run's tasks")

    # ... and the card is in clear nowhere
    dump = subprocess.run(["pg_dump", "--data-only", libpq_url(database)], capture_output=True, text=True, check=True)
    assert completed in dump.stdout and "$sealed" in dump.stdout  # the dump is of these runs
    time.sleep(0.5)  # the last commands reach the MONITOR's file
    redis_seen = _with_bodies(monitor.read_text(errors="replace"))
    assert completed in redis_seen and "sealed" in redis_seen  # the capture saw the runs' messages
    worker_log = sealed_worker.log.read_text(errors="replace")
    assert "payment.charge" in worker_log  # the worker logged its tasks (at DEBUG, with their arguments)
    places = {"pg_dump": dump.stdout, "redis MONITOR": redis_seen, "worker log": worker_log,
              "API log": "\n".join(r.getMessage() for r in caplog.records) + caplog.text,
              "API and console": "\n".join(pages), "Flower": json.dumps(tasks)}
    assert {where: card in text for where, text in places.items()} == {where: False for where in places}


def _flower_tasks(url: str, saga_id: str) -> dict | None:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"{url}/api/tasks?limit=1000", timeout=5) as r:
        tasks = json.load(r)
    mine = {k: v for k, v in tasks.items() if saga_id in str(v.get("args"))}
    return mine or None


def _with_bodies(capture: str) -> str:
    """The MONITOR capture with each message body kombu base64-encoded on Redis decoded after it."""
    bodies = re.findall(r'body\\?"\s*:\s*\\?"([A-Za-z0-9+/=]{16,})', capture)
    assert bodies, "no message body in the Redis capture"
    return capture + "\n".join(base64.b64decode(b).decode(errors="replace") for b in bodies)


