"""Starting a saga in the web app's own transaction (issue 19), on SQLite and PostgreSQL.

`start_saga(..., session=)` / `connection=` and `Choreography.start(..., session=)` write the run
in a SAVEPOINT of the caller's transaction, on the caller's connection; what they publish goes out
only after the caller's outermost transaction committed. The app here has its own table
(`tx_orders`) and its own engine (a plain `create_engine`, as an app would have), on the database
of the saga store; the runtime is the in-process tier's (the store, a `RecordingDispatcher`, a
clock the test moves). Each test reads both tables to see that they commit or vanish together.
"""
from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
from celery import Celery
from sqlalchemy import Column, Engine, MetaData, String, Table, create_engine, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import workflows.store.joined as joined
from workflows import IdempotencyConflict, Saga, Step, StepContext, register_saga, start_saga, step_task
from workflows.choreography import bus
from workflows.choreography.declaration import Choreography
from workflows.core.errors import SagaError, SagaIdTaken
from workflows.core.state import IdSource
from workflows.testing import Clock
from workflows.operations.sweeper import sweep
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import RecordingDispatcher
from tests.support.databases import own_pg_database, plain_engine



def _act(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    return {"step": ctx.step}


act = step_task("intx.act", queue="intx")(_act)
undo = step_task("intx.undo", queue="intx")(_act)
CHECKOUT = register_saga(Saga("intx.checkout", steps=[
    Step("reserve", action=act, compensation=undo, timeout=30),
    Step("charge", action=act, compensation=undo, timeout=30),
]))

SHOP = Choreography("intx_shop", completed={"OrderShipped"}, events={"OrderShipped"})
SHOP.service("warehouse").subscribe("OrderPlaced", lambda ctx, event: None)

app_metadata = MetaData()
ORDERS = Table("tx_orders", app_metadata, Column("id", String(64), primary_key=True),
               Column("saga_id", String(64)))
"""The web app's own table."""


@pytest.fixture(scope="module")
def pg_migrated() -> Iterator[str]:
    """A database of this module's own: its sweeps (at the fixed clock's time, plus the dispatch
    grace) must find this module's runs, not the shared database's (see tests/support/databases.py)."""
    with own_pg_database("in_tx") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def saga_database_url(request: pytest.FixtureRequest, saga_database_url: str) -> str:
    """The kit's fresh SQLite file, or this module's PostgreSQL database."""
    return saga_database_url if request.param == "sqlite" else str(request.getfixturevalue("pg_migrated"))


@pytest.fixture
def url(saga_database_url: str) -> str:
    return saga_database_url


@pytest.fixture
def saga_ids() -> IdSource:
    counter = itertools.count(1)
    prefix = uuid.uuid4().hex[:16]  # ids unique across runs: the PostgreSQL database is shared by the tests
    return lambda: f"{prefix}{next(counter):016x}"


@pytest.fixture
def rt(saga_runtime: Runtime) -> Runtime:
    saga_runtime.store.ping()  # the store's first connection puts a SQLite file in WAL mode (as a worker would have)
    return saga_runtime


@pytest.fixture
def dispatcher(rt: Runtime) -> RecordingDispatcher:
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    return rt.dispatcher


@pytest.fixture
def app_engine(url: str) -> Iterator[Engine]:
    """The app's own engine: plain `create_engine`, none of the store's settings (the driver's options
    the URL carries only: `?prepare_threshold=none` behind PgBouncer)."""
    engine = plain_engine(url)
    app_metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def relayed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """(event type, service) of every event the outbox relay sent (a memory-broker app, `bus.send` recorded)."""
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(bus, "send", lambda app, envelope, service, producer=None:
                        sent.append((envelope["eventType"], service)))
    with bus.use_publisher(Celery("intx", broker="memory://")):
        yield sent


def new_id() -> str:
    return uuid.uuid4().hex


def order_row(engine: Engine, order_id: str) -> Any:
    with engine.connect() as c:
        return c.execute(select(ORDERS).where(ORDERS.c.id == order_id)).first()


def run_exists(rt: Runtime, saga_id: str) -> bool:
    """Is the run committed? Read on a plain connection of its own (the store's would take SQLite's
    write lock, which an open app transaction holds)."""
    engine = plain_engine(rt.settings.database_url)
    try:
        with engine.connect() as c:
            return c.scalar(text("SELECT count(*) FROM sagas WHERE id = :id"), {"id": saga_id}) == 1
    finally:
        engine.dispose()


def first_steps(dispatcher: RecordingDispatcher, saga_id: str) -> list[str]:
    return [s.step or "" for s in dispatcher.steps() if s.saga_id == saga_id]


def checkout(session: Session, order_id: str, **kw: Any) -> str:
    """What a checkout view does: its own row, then the saga, in the same transaction."""
    session.execute(insert(ORDERS).values(id=order_id))
    saga_id = start_saga(CHECKOUT, {"order": order_id}, session=session, **kw)
    session.execute(ORDERS.update().where(ORDERS.c.id == order_id).values(saga_id=saga_id))
    return saga_id


# ------------------------------------------------------------------ commit, rollback


def test_commit_writes_the_order_and_the_run_together_and_publishes_step_1_once(
        rt: Runtime, dispatcher: RecordingDispatcher, app_engine: Engine) -> None:
    order = new_id()
    with Session(app_engine) as session:
        saga_id = checkout(session, order)
        assert dispatcher.sent == []  # nothing before the commit
        assert not run_exists(rt, saga_id)  # another connection does not see it yet
        session.commit()
        assert first_steps(dispatcher, saga_id) == ["reserve"]
        assert order_row(app_engine, order).saga_id == saga_id
        view = rt.store.get(saga_id)
        assert (view.state, [s.status for s in view.steps]) == ("RUNNING", ["RUNNING", "PENDING"])
        assert [e.type for e in view.events][:2] == ["SagaCreated", "SagaStarted"]

        # a later transaction of the same session publishes nothing again
        session.execute(insert(ORDERS).values(id=new_id()))
        session.commit()
        session.execute(insert(ORDERS).values(id=new_id()))
        session.rollback()
    assert len(dispatcher.steps()) == 1


def test_rollback_leaves_neither_the_order_nor_the_run_and_publishes_nothing(
        rt: Runtime, dispatcher: RecordingDispatcher, app_engine: Engine) -> None:
    order = new_id()
    with Session(app_engine) as session:
        saga_id = checkout(session, order)
        session.rollback()
        assert order_row(app_engine, order) is None and not run_exists(rt, saga_id)
        assert not any(joined._connection_pending.values())  # dropped when the transaction ended
        session.execute(insert(ORDERS).values(id=new_id()))
        session.commit()  # the next commit of the session does not publish the rolled-back start
    assert dispatcher.sent == []


def test_a_session_joined_to_the_callers_connection_waits_for_that_connections_commit(
        rt: Runtime, dispatcher: RecordingDispatcher, app_engine: Engine) -> None:
    # Given a session joined to a connection whose transaction the caller began (the usual test
    # fixture, or a request-scoped connection): session.commit() commits nothing by itself
    with app_engine.connect() as conn:
        outer = conn.begin()
        with Session(bind=conn) as session:  # the default join mode: the caller owns the transaction
            saga_id = checkout(session, new_id())
            session.commit()
            # Then nothing is published while the caller's transaction is still open ...
            assert dispatcher.sent == [] and not run_exists(rt, saga_id)
        outer.rollback()
    # ... and its rollback takes the run with it: step 1 is never published
    assert dispatcher.sent == [] and not run_exists(rt, saga_id)


def test_a_session_closed_without_commit_is_a_rollback(rt: Runtime, dispatcher: RecordingDispatcher,
                                                       app_engine: Engine) -> None:
    order = new_id()
    session = Session(app_engine)
    saga_id = checkout(session, order)
    session.close()
    assert order_row(app_engine, order) is None and not run_exists(rt, saga_id)
    session.execute(insert(ORDERS).values(id=new_id()))
    session.commit()
    assert dispatcher.sent == []


def test_the_app_failing_at_commit_takes_the_run_with_it(rt: Runtime, dispatcher: RecordingDispatcher,
                                                         app_engine: Engine) -> None:
    taken = new_id()
    with app_engine.begin() as c:
        c.execute(insert(ORDERS).values(id=taken))
    with Session(app_engine) as session:
        saga_id = start_saga(CHECKOUT, {"order": taken}, session=session)
        with pytest.raises(IntegrityError):  # the order id is taken: the app's own insert fails
            session.execute(insert(ORDERS).values(id=taken))
        session.rollback()
    assert not run_exists(rt, saga_id) and dispatcher.sent == []


def test_a_core_connection_commits_then_publishes(rt: Runtime, dispatcher: RecordingDispatcher,
                                                  app_engine: Engine) -> None:
    order = new_id()
    seen_at_publish: list[bool] = []
    real_send = dispatcher.send_step

    def send_step(run: Any, cmd: Any) -> None:  # the run must be visible to a worker when step 1 goes out
        seen_at_publish.append(run_exists(rt, run.saga_id))
        real_send(run, cmd)

    dispatcher.send_step = send_step  # type: ignore[method-assign]
    with app_engine.begin() as conn:
        conn.execute(insert(ORDERS).values(id=order))
        saga_id = start_saga(CHECKOUT, {"order": order}, connection=conn)
        assert dispatcher.sent == []
    assert first_steps(dispatcher, saga_id) == ["reserve"] and seen_at_publish == [True]
    assert order_row(app_engine, order) is not None and run_exists(rt, saga_id)

    with app_engine.connect() as conn:  # commit as you go: rollback, then a commit of other work
        other = new_id()
        conn.execute(insert(ORDERS).values(id=other))
        rolled_back = start_saga(CHECKOUT, {"order": other}, connection=conn)
        conn.rollback()
        conn.execute(insert(ORDERS).values(id=new_id()))
        conn.commit()
    assert order_row(app_engine, other) is None and not run_exists(rt, rolled_back)
    assert len(dispatcher.steps()) == 1


def test_a_connection_closed_without_commit_publishes_nothing(rt: Runtime, dispatcher: RecordingDispatcher,
                                                              app_engine: Engine) -> None:
    with app_engine.connect() as conn:
        saga_id = start_saga(CHECKOUT, {"order": "x"}, connection=conn)
    assert not run_exists(rt, saga_id) and dispatcher.sent == []


def test_the_session_publishes_after_the_outer_commit_not_after_a_savepoint(
        rt: Runtime, dispatcher: RecordingDispatcher, app_engine: Engine) -> None:
    with Session(app_engine) as session:
        session.execute(insert(ORDERS).values(id=new_id()))
        with session.begin_nested():  # the app's own savepoint, released
            kept = start_saga(CHECKOUT, {"order": "kept"}, session=session)
        assert dispatcher.sent == []
        try:
            with session.begin_nested():  # another one, rolled back: the run goes with it
                dropped = start_saga(CHECKOUT, {"order": "dropped"}, session=session)
                raise RuntimeError("the app changes its mind")
        except RuntimeError:
            pass
        session.commit()
    assert first_steps(dispatcher, kept) == ["reserve"] and first_steps(dispatcher, dropped) == []
    assert run_exists(rt, kept) and not run_exists(rt, dropped)


def test_a_connection_savepoint_rolled_back_takes_the_run_and_its_publish(
        rt: Runtime, dispatcher: RecordingDispatcher, app_engine: Engine) -> None:
    with app_engine.begin() as conn:
        sp = conn.begin_nested()
        dropped = start_saga(CHECKOUT, {"order": "dropped"}, connection=conn)
        sp.rollback()
        kept = start_saga(CHECKOUT, {"order": "kept"}, connection=conn)
    assert first_steps(dispatcher, kept) == ["reserve"] and first_steps(dispatcher, dropped) == []
    assert not run_exists(rt, dropped)


# ------------------------------------------------------------------ a crash between the commit and the publish


@pytest.mark.parametrize("how", ["the broker refuses", "the process dies"])
def test_killed_between_commit_and_publish_the_sweeper_sends_step_1(
        how: str, rt: Runtime, dispatcher: RecordingDispatcher, app_engine: Engine, clock: Clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    order = new_id()
    with Session(app_engine) as session:
        saga_id = checkout(session, order)
        with monkeypatch.context() as m:
            if how == "the broker refuses":
                dispatcher.fail = kombu.exceptions.OperationalError("broker down")
            else:  # the after-commit actions never run
                m.setattr(joined, "_run", lambda due: None)
            session.commit()  # the commit itself succeeds either way
        dispatcher.fail = None
    assert dispatcher.sent == [] and order_row(app_engine, order).saga_id == saga_id

    assert f"{saga_id}:reserve" not in sweep(rt, now=clock.now + timedelta(seconds=10)).redispatched
    report = sweep(rt, now=clock.now + timedelta(seconds=30 + rt.settings.dispatch_grace + 1))
    assert f"{saga_id}:reserve" in report.redispatched
    assert first_steps(dispatcher, saga_id) == ["reserve"]


# ------------------------------------------------------------------ idempotency keys inside the transaction


def test_a_used_key_returns_the_existing_run_and_the_callers_transaction_still_commits(
        rt: Runtime, dispatcher: RecordingDispatcher, app_engine: Engine) -> None:
    key, order = f"order-{new_id()}", new_id()
    with Session(app_engine) as session:
        first = checkout(session, order, idempotency_key=key)
        session.commit()
    dispatcher.take()

    retry_row = new_id()
    with Session(app_engine) as session:  # the web request, retried: its own row, the same start
        session.execute(insert(ORDERS).values(id=retry_row))
        again = start_saga(CHECKOUT, {"order": order}, idempotency_key=key, session=session)
        session.execute(insert(ORDERS).values(id=new_id()))  # the transaction is usable
        session.commit()
    assert again == first and dispatcher.sent == []
    assert order_row(app_engine, retry_row) is not None

    other_row = new_id()
    with Session(app_engine) as session:  # other content under that key
        session.execute(insert(ORDERS).values(id=other_row))
        with pytest.raises(IdempotencyConflict):
            start_saga(CHECKOUT, {"order": "another"}, idempotency_key=key, session=session)
        session.execute(insert(ORDERS).values(id=other_row + "-2"))
        session.commit()
    assert order_row(app_engine, other_row) is not None and order_row(app_engine, other_row + "-2") is not None
    assert dispatcher.sent == []


def test_a_key_used_twice_in_one_transaction_starts_one_run(rt: Runtime, dispatcher: RecordingDispatcher,
                                                            app_engine: Engine) -> None:
    key = f"order-{new_id()}"
    with app_engine.begin() as conn:
        a = start_saga(CHECKOUT, {"order": "o"}, idempotency_key=key, connection=conn)
        b = start_saga(CHECKOUT, {"order": "o"}, idempotency_key=key, connection=conn)
        conn.execute(insert(ORDERS).values(id=new_id()))
    assert a == b and first_steps(dispatcher, a) == ["reserve"] and len(dispatcher.steps()) == 1


def test_a_taken_id_raises_and_leaves_the_transaction_usable(rt: Runtime, dispatcher: RecordingDispatcher,
                                                             app_engine: Engine) -> None:
    saga_id = str(uuid.uuid4())
    start_saga(CHECKOUT, {"order": "o"}, saga_id=saga_id)  # committed on its own
    dispatcher.take()
    row = new_id()
    with Session(app_engine) as session:
        with pytest.raises(SagaIdTaken):
            start_saga(CHECKOUT, {"order": "o"}, saga_id=saga_id, session=session)
        session.execute(insert(ORDERS).values(id=row))
        session.commit()
    assert order_row(app_engine, row) is not None and dispatcher.sent == []


# ------------------------------------------------------------------ refusals


def test_a_connection_to_another_database_or_in_autocommit_is_refused(rt: Runtime, tmp_path: Path,
                                                                      app_engine: Engine) -> None:
    other = create_engine(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    with other.connect() as conn, pytest.raises(SagaError, match="where the workers read it"):
        start_saga(CHECKOUT, {"order": "o"}, connection=conn)
    with app_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        with pytest.raises(SagaError, match="autocommit"):
            start_saga(CHECKOUT, {"order": "o"}, connection=conn)
    with Session(app_engine) as session, app_engine.connect() as conn:
        with pytest.raises(SagaError, match="not both"):
            start_saga(CHECKOUT, {"order": "o"}, session=session, connection=conn)


# ------------------------------------------------------------------ a choreographed start


def test_a_choreographed_start_commits_with_the_callers_row_and_relays_after_commit(
        rt: Runtime, app_engine: Engine, relayed: list[tuple[str, str]]) -> None:
    order = new_id()
    with Session(app_engine) as session:
        session.execute(insert(ORDERS).values(id=order))
        saga_id = SHOP.start("OrderPlaced", {"order": order}, session=session)
        assert relayed == [] and not run_exists(rt, saga_id)
        session.commit()
    assert relayed == [("OrderPlaced", "warehouse")]
    assert order_row(app_engine, order) is not None and rt.store.saga_type(saga_id) == "intx_shop"
    assert [r.sent_at is not None for r in rt.store.outbox_of(saga_id)] == [True]

    gone = new_id()
    with Session(app_engine) as session:
        session.execute(insert(ORDERS).values(id=gone))
        rolled_back = SHOP.start("OrderPlaced", {"order": gone}, session=session)
        session.rollback()
    assert order_row(app_engine, gone) is None and not run_exists(rt, rolled_back)
    assert list(rt.store.outbox_of(rolled_back)) == [] and len(relayed) == 1


def test_a_choreographed_start_with_a_used_key_returns_its_saga_and_leaves_the_transaction_usable(
        rt: Runtime, app_engine: Engine, relayed: list[tuple[str, str]]) -> None:
    key = f"order-{new_id()}"
    with app_engine.begin() as conn:
        first = SHOP.start("OrderPlaced", {"order": "o"}, idempotency_key=key, connection=conn)
        again = SHOP.start("OrderPlaced", {"order": "o"}, idempotency_key=key, connection=conn)
        row = new_id()
        conn.execute(insert(ORDERS).values(id=row))
    assert first == again and relayed == [("OrderPlaced", "warehouse")]
    assert order_row(app_engine, row) is not None


def test_a_choreographed_start_whose_relay_never_ran_is_sent_by_the_outbox_sweep(
        rt: Runtime, app_engine: Engine, relayed: list[tuple[str, str]], clock: Clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from workflows.choreography import outbox

    with Session(app_engine) as session:
        with monkeypatch.context() as m:
            m.setattr(joined, "_run", lambda due: None)
            saga_id = SHOP.start("OrderPlaced", {"order": "o"}, session=session)
            session.commit()
    assert relayed == [] and [r.sent_at for r in rt.store.outbox_of(saga_id)] == [None]
    outbox.relay_pending(now=clock.now + timedelta(seconds=60))
    assert relayed == [("OrderPlaced", "warehouse")]

