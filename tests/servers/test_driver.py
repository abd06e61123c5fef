"""The hot path's statements on the driver's cursor (`workflows.store._driver`) send what SQLAlchemy
sends, read what it reads, and fail as it fails: against the real PostgreSQL, through psycopg 3
and psycopg2."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import event, exc, text
from sqlalchemy.engine import make_url

from tests.support.databases import own_pg_database, server_engine
from tests.support.runs import apply, create_run
from workflows import Saga, Step
from workflows.core.state import ActionFailed, ActionSucceeded, ErrorInfo
from workflows.store.db import dispose_engines, get_engine
from workflows.store._driver import compiled_for, driver_cursor
from workflows.store.postgres import PostgresStore, transition_statement
from workflows.store.sql import SqlStore

SAGA = Saga("driver_suite", steps=[Step("a", action="x.a", compensation="x.undo_a"),
                                   Step("b", action="x.b", compensation="x.undo_b"),
                                   Step("c", action="x.c", compensation=None)])


@pytest.fixture(params=["psycopg", "psycopg2"])
def url(request, database: str) -> str:  # type: ignore[no-untyped-def]
    u = make_url(database).set(drivername=f"postgresql+{request.param}")
    if request.param == "psycopg2":  # psycopg2 never prepares: ?prepare_threshold= (PgBouncer) is psycopg 3's
        u = u.difference_update_query(["prepare_threshold"])
    return u.render_as_string(hide_password=False)


def test_the_run_read_on_the_driver_is_the_run_sqlalchemy_reads(url: str) -> None:
    # Given a run part way: a result with nested JSON, a retry pending with its error and eta
    store, reference = PostgresStore(url), SqlStore(url)
    run = create_run(store, SAGA, {"n": 1, "nested": {"k": [1, "x", None]}})
    v = apply(store, SAGA, run.saga_id, ActionSucceeded("a", {"r": {"deep": [1.5, True]}}), by="t").state.version
    applied = apply(store, SAGA, run.saga_id, ActionFailed("b", ErrorInfo("Boom", "again"), True, 3.0), by="t",
                    expected_version=v)
    assert applied.transition is not None

    # When it is read on the driver and through SQLAlchemy, Then both are the same state
    on_driver, through_sqlalchemy = store.load(run.saga_id), reference.load(run.saga_id)
    assert on_driver == through_sqlalchemy
    assert on_driver.step("a").result == {"r": {"deep": [1.5, True]}}
    assert on_driver.step("b").eta is not None and on_driver.step("b").eta.tzinfo is not None
    assert on_driver.step("b").deadline_at == through_sqlalchemy.step("b").deadline_at


def test_a_transition_sends_the_sql_and_parameters_sqlalchemy_would_send(url: str) -> None:
    # Given a transition decided on a run
    store = PostgresStore(url)
    run = create_run(store, SAGA, {"n": 2})
    assert run.state is not None
    from workflows.core.engine import decide
    from workflows.core.state import Timing

    now = datetime.now(timezone.utc)
    t = decide(SAGA, store.load(run.saga_id), ActionSucceeded("a", {"x": [1]}), now, lambda: uuid.uuid4().hex,
               Timing())
    statement, params = transition_statement(t, "by-test", now)

    # When SQLAlchemy executes it (rolled back) and the driver statement prepares it
    seen: list[tuple[str, dict[str, object]]] = []
    engine = get_engine(url)
    listener = lambda conn, cursor, sql, parameters, *a: seen.append((sql, parameters))  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        with engine.connect() as c:
            c.execute(statement, params)
            c.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    driver = compiled_for(url)(statement)

    # Then the SQL and every parameter value are the same (on psycopg 3, in `$n` form: each name once)
    [(sql, sent)] = seen
    assert driver.sql == sql
    if driver.native is not None:
        native, order = driver.native
        assert sorted(order) == sorted(sent) and "%(" not in native
        assert native.count("$") >= len(order) and f"${len(order)}" in native
    mine = driver.parameters(params)
    assert set(mine) == set(sent)
    for name in sent:  # psycopg's JSON wrappers compare by their object
        a, b = mine[name], sent[name]
        assert getattr(a, "obj", getattr(a, "adapted", a)) == getattr(b, "obj", getattr(b, "adapted", b)), name


def test_a_naive_datetime_is_refused_before_anything_is_sent(url: str) -> None:
    store = PostgresStore(url)
    run = create_run(store, SAGA, {"n": 5})
    from workflows.core.engine import decide
    from workflows.core.state import Timing

    now = datetime.now(timezone.utc)
    t = decide(SAGA, store.load(run.saga_id), ActionSucceeded("a", {}), now, lambda: uuid.uuid4().hex, Timing())
    statement, params = transition_statement(t, "by-test", now.replace(tzinfo=None))  # a naive `updated_at`
    with pytest.raises(ValueError, match="naive datetime"):
        compiled_for(url)(statement).parameters(params)
    assert store.load(run.saga_id).version == t.before.version


def test_a_taken_id_is_sqlalchemys_integrity_error_and_writes_nothing(url: str) -> None:
    store = PostgresStore(url)
    run = create_run(store, SAGA, {"n": 3})
    from workflows.store.postgres import creation_statement
    from workflows.store.rows import creation_rows
    from workflows.core.engine import decide, new_run
    from workflows.core.state import STARTED_BY, Started, Timing

    now = datetime.now(timezone.utc)
    t = decide(SAGA, new_run(SAGA, run.saga_id, {"n": 3}, STARTED_BY), Started(), now, lambda: uuid.uuid4().hex,
               Timing())
    statement, params = creation_statement(*creation_rows(t, idempotency_key=None, by="", now=now))
    with pytest.raises(exc.IntegrityError), driver_cursor(url) as cur:
        compiled_for(url)(statement).execute(cur, params)
    assert len(store.load(run.saga_id).steps) == 3  # the run is as it was


def test_a_connection_the_server_dropped_is_sqlalchemys_operational_error_and_leaves_the_pool() -> None:
    with own_pg_database("driver") as url:
        dispose_engines()
        store = PostgresStore(url)
        run = create_run(store, SAGA, {"n": 4})
        store.load(run.saga_id)  # a pooled connection, on the driver
        # When the server ends every session of the database
        admin = server_engine()
        with admin.connect() as c:
            ended = c.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = :d AND pid <> pg_backend_pid()"),
                              {"d": make_url(url).database}).scalar()
        admin.dispose()
        assert ended and ended >= 1
        # Then the next read fails as SQLAlchemy's disconnect, and the one after it reconnects
        failures = 0
        for _ in range(6):  # one per pooled connection the pool held
            try:
                assert store.load(run.saga_id).saga_id == run.saga_id
                break
            except exc.OperationalError as e:
                assert e.connection_invalidated
                failures += 1
        else:
            raise AssertionError("never reconnected")
        assert failures >= 1
        dispose_engines()
