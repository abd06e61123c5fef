"""Real servers, real workers. Set TEST_* variables to point the suite elsewhere.

The test process and its worker subprocesses share one broker (Redis db 15) and one database
(PostgreSQL `test`); both are wiped at the start of the session. Workers run the prefork pool,
as in production, so time limits, late acks and redelivery are the real ones.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["workflows.testing"]  # the in-process tier's fixtures (saga_runtime, saga_kit, ...)

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.setdefault("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_URL = os.environ.setdefault("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.setdefault("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

# This process is a client of the same system the workers run.
os.environ["SAGA_BROKER_URL"] = REDIS_URL
os.environ["SAGA_DATABASE_URL"] = PG_URL
os.environ["SAGA_EXTRA_MODULES"] = "tests.support.sagas"
os.environ["SAGA_DISPATCH_GRACE"] = "1"
os.environ.setdefault("SAGA_LOG_LEVEL", "WARNING")
sys.path.insert(0, str(ROOT))


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


class WorkerProcess:
    """`celery -A worker worker` in a subprocess, stopped (or killed) by the test."""

    def __init__(self, name: str, queues: str, concurrency: int = 2, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.name = name
        self.log = log or Path(f"/tmp/saga-test-worker-{name}-{os.getpid()}.log")
        cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork", "-c", str(concurrency),
               "-Q", queues, "-n", f"{name}@%h", "--loglevel=WARNING", "--without-gossip", "--without-mingle"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env or worker_env(), stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, app, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log.read_text()[-2000:]}")
            replies = app.control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5)
            if replies:
                return
        raise RuntimeError(f"worker {self.name} not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        from tests.support.interfaces import stop_process_group

        stop_process_group(self.proc)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture(scope="session")
def database() -> str:
    from tasks.schema import drop_shop_tables, migrate
    from workflows.store.db import downgrade_all

    downgrade_all(PG_URL)
    drop_shop_tables(PG_URL)
    migrate(PG_URL)  # the saga tables and the example shop's
    return PG_URL


@pytest.fixture(scope="session")
def broker() -> str:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


@pytest.fixture(scope="session")
def app(database: str, broker: str):  # type: ignore[no-untyped-def]
    import worker

    return worker.app


@pytest.fixture(scope="session")
def running_worker(app) -> Iterator[WorkerProcess]:  # type: ignore[no-untyped-def]
    w = WorkerProcess("main", "saga,inventory,payment,shipping,notification,tests", concurrency=2)
    try:
        w.wait_ready(app)
        yield w
    finally:
        w.stop()


@pytest.fixture
def redis_client():  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture
def order_factory():  # type: ignore[no-untyped-def]
    """A valid order with a fresh id and its own SKU stocked with 10 units."""
    from tasks.inventory import restock

    def make(**overrides):  # type: ignore[no-untyped-def]
        oid = uuid.uuid4().hex[:10]
        sku = f"SKU-{oid}"
        restock({sku: 10})
        order = {"order_id": f"order-{oid}", "customer_id": "cust-1", "email": "c@example.com",
                 "items": [{"sku": sku, "quantity": 2, "price": "12.50"}],
                 "payment": {"card": "4242424242424242"},
                 "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}
        order.update(overrides)
        return order

    return make


@pytest.fixture(autouse=True)
def _no_faults_left(request):  # type: ignore[no-untyped-def]
    yield
    if "app" in request.fixturenames:
        from tasks.common import clear_faults

        clear_faults()
