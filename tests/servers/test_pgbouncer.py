"""PgBouncer in transaction mode between the workers (and the API, the sweeper) and PostgreSQL.

In transaction mode each transaction (each statement, in autocommit) may run on another server
connection: nothing may rely on session state across transactions, and a statement prepared on one
server connection is unknown on the next. PgBouncer before 1.21 (Debian 12 ships 1.18) keeps no
prepared statements, so psycopg 3 must not prepare: `?prepare_threshold=none` on the database URL
(`workflows.store.db.driver_arguments`). The test starts its own PgBouncer on a free port in front
of the test PostgreSQL (`tests/support/servers.py`), and a private Redis as the broker, so the
only worker on its queues is its own.

To run other modules through PgBouncer: `TEST_PGBOUNCER=1 pytest tests/servers/test_orchestration.py`
(the conftest starts one in front of TEST_PG_URL and points the suite and its workers at it).
"""
from __future__ import annotations

import json
import os

import psycopg
import pytest
from celery import Celery
from tests.support.workers import WorkerProcess, worker_env
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support.servers import pgbouncer, private_redis
from workflows.store.db import async_engine_from_url, driver_arguments, engine_from_url, statement_engine

PG_URL = os.environ["TEST_PG_URL"]  # the session's database (tests/servers/conftest.py sets it)
N = int(os.environ.get("PGBOUNCER_N", "120"))
QUEUES = "saga,inventory,payment,shipping,notification"


def test_prepare_threshold_is_read_from_the_url_and_bad_values_are_named() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:6432/db?prepare_threshold=none&application_name=w"
    assert driver_arguments(url) == ("postgresql+psycopg://postgres@127.0.0.1:6432/db?application_name=w",
                                     {"prepare_threshold": None})
    assert driver_arguments("postgresql+psycopg://h/db?prepare_threshold=3")[1] == {"prepare_threshold": 3}
    assert driver_arguments("postgresql+psycopg://h/db") == ("postgresql+psycopg://h/db", {})
    with pytest.raises(ValueError, match="prepare_threshold=sometimes: give `none`"):
        driver_arguments("postgresql+psycopg://h/db?prepare_threshold=sometimes")
    with pytest.raises(ValueError, match="option of psycopg 3"):
        driver_arguments("postgresql+psycopg2://h/db?prepare_threshold=none")


def test_an_engine_from_the_url_gets_its_driver_options_and_the_callers_own_win() -> None:
    import asyncio

    url = make_url(PG_URL).update_query_dict({"prepare_threshold": "none"}).render_as_string(hide_password=False)
    engine = engine_from_url(url, pool_size=1)
    with engine.connect() as c:  # a plain create_engine(url) fails here: psycopg gets the string "none"
        assert c.connection.dbapi_connection.prepare_threshold is None  # type: ignore[union-attr]
        assert c.exec_driver_sql("SELECT 1").scalar() == 1
    engine.dispose()
    engine = engine_from_url(url, connect_args={"prepare_threshold": 7})
    with engine.connect() as c:
        assert c.connection.dbapi_connection.prepare_threshold == 7  # type: ignore[union-attr]
    engine.dispose()

    async def threshold() -> object:
        aengine = async_engine_from_url(url)
        async with aengine.connect() as c:
            value = (await c.get_raw_connection()).driver_connection.prepare_threshold  # type: ignore[union-attr]
        await aengine.dispose()
        return value

    assert asyncio.run(threshold()) is None


@pytest.fixture(scope="module")
def bouncer(database: str) -> str:  # type: ignore[misc]
    with pgbouncer(database, pool_size=10) as url:
        yield url


def test_prepared_statements_break_through_transaction_pooling_unless_turned_off(database: str) -> None:
    """Why the setting exists: two clients sharing one server connection, each preparing its 5th
    execution of the same statement under psycopg's name `_pg3_0`."""
    with pgbouncer(database, pool_size=1) as url:
        plain = url.replace("?prepare_threshold=none", "")
        engine = create_engine(plain, pool_size=2)
        with engine.connect() as a, engine.connect() as b:
            with pytest.raises(Exception) as failed:
                for i in range(6):
                    for c in (a, b):
                        c.execute(text("SELECT :i + 1"), {"i": i})
                        c.commit()
        assert isinstance(failed.value.__cause__, (psycopg.errors.DuplicatePreparedStatement,
                                                   psycopg.errors.InvalidSqlStatementName)), failed.value
        engine.dispose()
        # With ?prepare_threshold=none the same interleaving runs to the end
        bare, connect_args = driver_arguments(url)
        engine = create_engine(bare, pool_size=2, connect_args=connect_args)
        with engine.connect() as a, engine.connect() as b:
            for i in range(20):
                for c in (a, b):
                    assert c.execute(text("SELECT :i + 1"), {"i": i}).scalar() == i + 1
                    c.commit()
        engine.dispose()


def test_the_hot_path_driver_statements_run_through_pgbouncer(bouncer: str) -> None:
    """The store's raw-cursor statements (`store/_driver.py`) on the autocommit engine, many times
    over the pool: no prepared statement, no session state."""
    with statement_engine(bouncer).connect() as c:
        for i in range(30):
            assert c.execute(text("SELECT count(*) FROM sagas WHERE id = :id"), {"id": f"none-{i}"}).scalar() == 0


def test_order_sagas_run_through_pgbouncer_in_transaction_mode(bouncer: str, app, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Given a worker, the starts and the sweeper all on PgBouncer (transaction mode, 10 server
    connections for every client), when N order sagas run, then every one ends COMPLETED with each
    effect exactly once."""
    from tests.support.ha import Load

    with private_redis() as broker:
        client = Celery("tests-pgbouncer")
        client.config_from_object("celeryconfig")
        client.conf.broker_url = broker
        worker = WorkerProcess(f"pgbouncer-{os.getpid()}", QUEUES, concurrency=4,
                               env=worker_env(SAGA_BROKER_URL=broker, SAGA_DATABASE_URL=bouncer),
                               log=tmp_path / "worker.log")
        try:
            worker.wait_ready(client, timeout=60)
            load = Load(client, N, database_url=bouncer)
            load.start()
            left = load.wait_terminal(bound=120)
        finally:
            worker.stop()
        figures, violations = load.check()
    print(json.dumps(figures, sort_keys=True, default=str))
    log = (tmp_path / "worker.log").read_text()
    assert left == 0, f"{left} saga(s) not terminal: {log[-3000:]}"
    assert violations == [], "\n".join(violations[:30])
    assert figures["states"] == {"COMPLETED": N}
    assert "prepared statement" not in log, log[-3000:]
    assert PG_URL not in bouncer  # it really went through PgBouncer's port
