"""The servers tier's fixtures: real servers, real workers. Set TEST_* variables to point it elsewhere.

The test process and its worker subprocesses share one broker (Redis db 15) and one database
(PostgreSQL `test`); both are wiped at the start of the session. Workers run the prefork pool,
as in production, so time limits, late acks and redelivery are the real ones.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support.workers import WorkerProcess

REDIS_URL = os.environ.setdefault("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_URL = os.environ.setdefault("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
if os.environ.get("TEST_PGBOUNCER") == "1":  # the whole session through PgBouncer in transaction mode
    from tests.support.servers import session_pgbouncer

    PG_URL = os.environ["TEST_PG_URL"] = session_pgbouncer(PG_URL)
AMQP_URL = os.environ.setdefault("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

# This process is a client of the same system the workers run.
os.environ["SAGA_BROKER_URL"] = REDIS_URL
os.environ["SAGA_DATABASE_URL"] = PG_URL
os.environ["SAGA_EXTRA_MODULES"] = "tests.support.sagas"
os.environ["SAGA_DISPATCH_GRACE"] = "1"
os.environ.setdefault("SAGA_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def database() -> str:
    from tasks.schema import migrate
    from tests.support.databases import empty_pg_database

    empty_pg_database(PG_URL)  # from nothing, whatever an earlier run or another checkout left
    migrate(PG_URL)  # the saga tables and the example shop's
    return PG_URL


@pytest.fixture(scope="session")
def broker() -> str:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


@pytest.fixture(scope="session", autouse=True)
def _deployment_registered() -> None:
    """The deployment's sagas and step tasks (worker.py, with SAGA_EXTRA_MODULES) registered before
    any test snapshots the registries: tests/conftest.py restores them after each test, so a first
    `import worker` inside a test would have its registrations undone, and the module, imported
    once, would never make them again (a later test: "unknown saga 'tests.three'").

    The example shop seals its orders' card numbers: fixed test keys (never a deployment's), set
    here, when the first servers test starts, not at import, so that the pure and in-process tiers
    collected in the same session do not run with them."""
    os.environ.setdefault("SAGA_FIELD_KEYS", "t1:fCx7/5EEW5XYdi6l6DEi8a5/rAYpNKPVMCt0OLcv4QE=")
    os.environ.setdefault("SAGA_FIELD_HASH_KEY", "H7UqBjpn7x+uNaX662Vhwq7D+wBwwqpPjTZ1SpedLiY=")
    import worker  # noqa: F401


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


# ------------------------------------------------------------------ choreography: the service pools


@pytest.fixture(scope="session", params=["redis", "amqp"])
def choreo_cluster(request, app):  # type: ignore[no-untyped-def]
    """The service pools on Redis, then on RabbitMQ (topic routing differs between them): one
    session-wide cluster of service workers per broker, shared by every choreography test module."""
    from tests.support.choreo import Cluster

    c = Cluster(request.param)
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def cluster(choreo_cluster):  # type: ignore[no-untyped-def]
    """The cluster of this test's broker; this process publishes events through it meanwhile."""
    from workflows.choreography import use_publisher

    with use_publisher(choreo_cluster.app):
        yield choreo_cluster
