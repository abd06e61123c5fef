"""The seed walkthrough's three testing commands, copied verbatim, against a running example deployment.

    # Simulate service failure
    curl -X POST http://localhost:8001/api/test/fail-next-request
    # Trigger saga
    curl -X POST http://localhost:8000/api/orders -H "Content-Type: application/json" \\
      -d '{"items":[{"productId":"123","quantity":2}]}'
    # Check compensation
    curl http://localhost:8000/api/sagas/order-123/status

The deployment is real processes, as a user starts them: `uvicorn api:app` (`make api`), the example
payment service `uvicorn tasks.payment_service:app` (`make payment-service`) on a port of its own, a
prefork Celery worker (`celery -A worker worker`) on every example queue, a PostgreSQL database of
its own migrated by `python -m tasks.schema` (`make migrate`), and RabbitMQ (the suite's vhost: a
broker no other worker of the session consumes the example queues of). The commands run in bash
with curl exactly as the README shows them; **the ports are the one thing substituted** (8000 and
8001 become free ones, so the test never collides with a deployment on the documented ports).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kombu import Connection, Exchange, Queue

from tests.support.amqp import amqp_app
from tests.support.databases import drop_pg_database, fresh_pg_database
from tests.support.interfaces import stop_process_group, wait_until
from tests.support.workers import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ["TEST_AMQP_URL"]
def field_keys() -> dict[str, str]:
    """The session's sealed-field test keys (set when the first servers test starts: conftest)."""
    return {k: os.environ[k] for k in ("SAGA_FIELD_KEYS", "SAGA_FIELD_HASH_KEY")}
"""The keys of the example's sealed card numbers (tests/servers/conftest.py), which a deployment sets."""
EXAMPLE_QUEUES = ("saga", "inventory", "payment", "shipping", "notification")

SEED_COMMANDS = """\
# Simulate service failure
curl -X POST http://localhost:8001/api/test/fail-next-request

# Trigger saga
curl -X POST http://localhost:8000/api/orders \\
  -H "Content-Type: application/json" \\
  -d '{"items":[{"productId":"123","quantity":2}]}'

# Check compensation
curl http://localhost:8000/api/sagas/order-123/status
"""
"""The seed document's block, character for character."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)


@dataclass
class Deployment:
    api_port: int
    payment_port: int
    database_url: str

    def on_its_ports(self, script: str) -> str:
        """`script` with the documented ports replaced by this deployment's (nothing else changes)."""
        return (script.replace("http://localhost:8000/", f"http://localhost:{self.api_port}/")
                      .replace("http://localhost:8001/", f"http://localhost:{self.payment_port}/"))


def _serve(args: list[str], port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", *args, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, timeout=60, what=f"{args[0]} answering /healthz")
    return proc


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The example deployment on a fresh database: the API, the payment service, a worker."""
    home = tmp_path_factory.mktemp("seed-deployment")
    url = fresh_pg_database("seed")
    # a user's shell: the deployment's settings and nothing of the test session's (no test sagas,
    # no token: the seed's curl sends none; test mode only where `make payment-service` turns it on)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_", "TEST_"))}
    env.update({"PYTHONPATH": str(ROOT), "SAGA_DATABASE_URL": url, "SAGA_BROKER_URL": AMQP_URL,
                "SAGA_DATA_DIR": str(home / "data"), "SAGA_LOG_LEVEL": "WARNING", **field_keys()})
    procs: list[Any] = []
    try:
        subprocess.run([sys.executable, "-m", "tasks.schema"], cwd=ROOT, env=env, check=True, capture_output=True,
                       timeout=120)  # `make migrate`
        with Connection(AMQP_URL) as conn:  # nothing another test left in the example queues
            for q in EXAMPLE_QUEUES:
                Queue(q, Exchange(q), q, channel=conn.default_channel).declare()
                conn.default_channel.queue_purge(q)
        worker = WorkerProcess("seed", ",".join(EXAMPLE_QUEUES), concurrency=2, env=env, log=home / "worker.log")
        procs.append(worker)
        worker.wait_ready(amqp_app(), timeout=60)
        api_port, payment_port = free_port(), free_port()
        procs.append(_serve(["api:app"], api_port, env, home / "api.log"))
        procs.append(_serve(["tasks.payment_service:app"], payment_port, {**env, "SAGA_TEST_MODE": "true"},
                            home / "payment.log"))
        yield Deployment(api_port, payment_port, url)
    finally:
        for p in reversed(procs):
            p.stop() if isinstance(p, WorkerProcess) else stop_process_group(p)
        drop_pg_database(url)


def run(script: str) -> str:
    """`script` in bash, every curl failing the script on a non-2xx answer (--fail-with-body)."""
    prelude = "set -euo pipefail\ncurl() { command curl -sS --fail-with-body \"$@\"; echo; }\n"
    done = subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def shop_row(url: str, sql: str) -> Any:
    from sqlalchemy import text

    from tests.support.databases import plain_engine

    engine = plain_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(text(sql)).first()
    finally:
        engine.dispose()


# ------------------------------------------------------------------ the docs carry the seed's block


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_the_readme_and_the_getting_started_page_show_the_seeds_three_commands_verbatim(page: str) -> None:
    assert SEED_COMMANDS in bash_blocks(ROOT / page), f"{page}: no ```bash block is the seed's three commands"


# ------------------------------------------------------------------ the three commands, run


def test_the_seeds_three_commands_compensate_order_123_and_the_status_shows_it(deployment: Deployment) -> None:
    # Given the example deployment, fresh. When the user pastes the seed's block (ports substituted):
    out = run(deployment.on_its_ports(SEED_COMMANDS)).splitlines()

    armed, started = json.loads(out[0]), json.loads(out[1])
    assert armed == {"service": "payment", "times": 1, "permanent": True, "operation": "action",
                     "message": "injected by POST /api/test/fail-next-request"}
    assert started["order_id"] == started["saga_id"] == "order-123"
    assert started["status_url"].endswith("/api/sagas/order-123/status")
    # the third command answered at once (the saga may still be running then); a user who runs it
    # again a moment later sees the end: the same command, verbatim, until the run is terminal
    check = deployment.on_its_ports(SEED_COMMANDS.split("# Check compensation\n")[1])

    def finished() -> dict[str, Any] | None:
        status: dict[str, Any] = json.loads(run(check))
        return status if status["terminal"] else None

    status = wait_until(finished, timeout=90, what="order-123 terminal")

    # Then the armed failure failed the charge, and the reservation before it was undone
    assert status["id"] == "order-123" and status["saga_type"] == "order_fulfillment"
    assert status["state"] == "COMPENSATED"
    steps = {s["name"]: s for s in status["steps"]}
    assert steps["process_payment"]["status"] == "FAILED" and steps["process_payment"]["attempts"] == 1
    assert "injected by POST /api/test/fail-next-request" in steps["process_payment"]["error"]
    assert steps["reserve_inventory"]["status"] == "COMPENSATED"
    assert steps["create_shipment"]["status"] == steps["send_confirmation"]["status"] == "PENDING"
    assert [h["type"] for h in status["history"]][-1] == "SagaCompensated"
    # in the shop's own tables: the stock of product 123 is back, the switch used up
    assert shop_row(deployment.database_url, "SELECT available FROM inventory_stock WHERE sku = '123'") == (100,)
    assert shop_row(deployment.database_url, "SELECT remaining FROM service_faults WHERE service = 'payment'") == (0,)

    # And the switch failed one charge only: the seed's order once more is the shop's next, and completes
    trigger = SEED_COMMANDS.split("# Trigger saga\n")[1].split("\n\n")[0]
    again = json.loads(run(deployment.on_its_ports(trigger)))
    assert again["order_id"] == "order-124"
    ended = wait_until(lambda: (s := httpx.get(f"http://127.0.0.1:{deployment.api_port}{again['status_url']}")
                                .json())["terminal"] and s, timeout=90, what="order-124 terminal")
    assert ended["state"] == "COMPLETED"
    assert shop_row(deployment.database_url, "SELECT available FROM inventory_stock WHERE sku = '123'") == (98,)


def test_the_payment_service_without_test_mode_has_no_switch(deployment: Deployment,
                                                             tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_", "TEST_"))}
    env.update({"PYTHONPATH": str(ROOT), "SAGA_DATABASE_URL": deployment.database_url, "SAGA_BROKER_URL": AMQP_URL,
                "SAGA_DATA_DIR": str(tmp_path), **field_keys()})
    port = free_port()
    proc = _serve(["tasks.payment_service:app"], port, env, tmp_path / "payment.log")
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/api/test/fail-next-request")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok", "service": "payment",
                                                                       "test_mode": False}
    finally:
        stop_process_group(proc)
