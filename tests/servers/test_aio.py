"""The asyncio client (`workflows.aio`) in process: PostgreSQL (a database of this module's own),
SQLAlchemy's async engine on psycopg 3, a `RecordingDispatcher`.

The start in the caller's transaction is written on the caller's `AsyncSession`/`AsyncConnection`
and commits or rolls back with the caller's own row; step 1 is published once, after the outermost
COMMIT, on a thread of the client's pool (never on the event loop's thread). Signal, status, cancel
and wait from `async def` code. The same client under uvicorn with a real worker: tests/servers/test_aio_web.py.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from tests.support.databases import own_pg_database, plain_engine
from workflows import (IdempotencyConflict, Saga, SagaNotFound, Step, StepContext, Wait, aio, register_saga,
                       step_task)
from workflows.core.errors import NotWaiting, SagaError
from workflows.runtime.container import Runtime, activate
from workflows.runtime.dispatch import RecordingDispatcher
from workflows.runtime.settings import Settings
from workflows.store.db import async_engine_from_url


def _act(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    return {"step": ctx.step}


act = step_task("aio.act", queue="aio")(_act)
undo = step_task("aio.undo", queue="aio")(_act)
CHECKOUT = register_saga(Saga("aio.checkout", steps=[
    Step("reserve", action=act, compensation=undo, timeout=30),
    Step("charge", action=act, compensation=undo, timeout=30),
]))
CONFIRM = register_saga(Saga("aio.confirm", steps=[
    Wait("confirm", signal="confirm", timeout=timedelta(days=1)),
    Step("ship", action=act, compensation=None, timeout=30),
]))

app_metadata = MetaData()
ORDERS = Table("aio_orders", app_metadata, Column("id", String(64), primary_key=True), Column("saga_id", String(64)))
"""The web app's own table."""


class ThreadRecordingDispatcher(RecordingDispatcher):
    """Records what would be published, and on which thread."""

    threads: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.threads = []

    def send_step(self, run: Any, cmd: Any) -> None:
        self.threads.append(threading.current_thread().name)
        super().send_step(run, cmd)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with own_pg_database("aio") as u:
        engine = plain_engine(u)
        app_metadata.create_all(engine)
        engine.dispose()
        yield u


@pytest.fixture
def dispatcher() -> ThreadRecordingDispatcher:
    return ThreadRecordingDispatcher()


@pytest.fixture
def rt(url: str, tmp_path: Path, dispatcher: ThreadRecordingDispatcher) -> Iterator[Runtime]:
    counter = itertools.count(1)
    prefix = uuid.uuid4().hex[:16]
    runtime = Runtime(app=None, settings=Settings(database_url=url, data_dir=tmp_path),
                      clock=lambda: datetime.now(timezone.utc), ids=lambda: f"{prefix}{next(counter):016x}",
                      _dispatcher=dispatcher)
    with activate(runtime):
        yield runtime


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def async_engine(url: str) -> AsyncEngine:
    assert url.startswith("postgresql+psycopg://")  # psycopg 3's async mode: no other driver needed
    return async_engine_from_url(url)  # behind PgBouncer: ?prepare_threshold=none as psycopg's option


def committed(url: str, saga_id: str, order_id: str) -> tuple[bool, bool]:
    """(is the run there, is the order row there), read on a connection of the test's own."""
    engine = plain_engine(url)
    try:
        with engine.connect() as c:
            run = c.scalar(text("SELECT count(*) FROM sagas WHERE id = :id"), {"id": saga_id}) == 1
            order = c.execute(select(ORDERS).where(ORDERS.c.id == order_id)).first() is not None
        return run, order
    finally:
        engine.dispose()


def first_steps(dispatcher: RecordingDispatcher, saga_id: str) -> list[str]:
    return [s.step or "" for s in dispatcher.steps() if s.saga_id == saga_id]


# ------------------------------------------------------------------ in the caller's AsyncSession


def test_an_async_session_commit_writes_the_order_and_the_run_and_publishes_step_1_once_off_the_loop(
        rt: Runtime, dispatcher: ThreadRecordingDispatcher, url: str) -> None:
    order = uuid.uuid4().hex

    async def checkout() -> tuple[str, list[str]]:
        engine = async_engine(url)
        try:
            async with engine.connect() as probe:  # warm: the pool's first connection
                await probe.execute(text("SELECT 1"))
            from sqlalchemy.ext.asyncio import AsyncSession
            async with AsyncSession(engine) as session:
                await session.execute(insert(ORDERS).values(id=order))
                saga_id = await aio.start_saga(CHECKOUT, {"order": order}, idempotency_key=f"order-{order}",
                                               session=session)
                await session.execute(ORDERS.update().where(ORDERS.c.id == order).values(saga_id=saga_id))
                before = list(dispatcher.sent)
                assert committed(url, saga_id, order) == (False, False)  # not before the commit
                await session.commit()
                # a retried request: the same key and input give the same run, publish nothing new
                again = await aio.start_saga(CHECKOUT, {"order": order}, idempotency_key=f"order-{order}",
                                             session=session)
                await session.commit()
                assert again == saga_id
                with pytest.raises(IdempotencyConflict):
                    await aio.start_saga(CHECKOUT, {"order": "other"}, idempotency_key=f"order-{order}",
                                         session=session)
                await session.rollback()
            assert before == []
            return saga_id, [threading.current_thread().name]
        finally:
            await engine.dispose()

    saga_id, loop_thread = run_async(checkout())
    assert committed(url, saga_id, order) == (True, True)
    assert first_steps(dispatcher, saga_id) == ["reserve"]  # once, after the commit
    assert dispatcher.threads and all(t.startswith("saga-aio") for t in dispatcher.threads), dispatcher.threads
    assert loop_thread[0] not in dispatcher.threads
    view = rt.store.get(saga_id)
    assert (view.state, [s.status for s in view.steps]) == ("RUNNING", ["RUNNING", "PENDING"])


@pytest.mark.parametrize("how", ["rollback", "exception", "closed"])
def test_an_async_session_that_does_not_commit_writes_nothing_and_publishes_nothing(
        rt: Runtime, dispatcher: RecordingDispatcher, url: str, how: str) -> None:
    order = uuid.uuid4().hex
    saga_id = f"aio-{uuid.uuid4()}"

    async def checkout() -> None:
        from sqlalchemy.ext.asyncio import AsyncSession

        engine = async_engine(url)
        try:
            session = AsyncSession(engine)
            try:
                await session.execute(insert(ORDERS).values(id=order))
                await aio.start_saga(CHECKOUT, {"order": order}, saga_id=saga_id, session=session)
                if how == "rollback":
                    await session.rollback()
                elif how == "exception":
                    raise RuntimeError("the view failed after the start")
            except RuntimeError:
                await session.rollback()
            finally:
                await session.close()  # "closed": closed without a commit
            async with AsyncSession(engine) as later:  # the next commit on the same engine publishes nothing
                await later.execute(insert(ORDERS).values(id=uuid.uuid4().hex))
                await later.commit()
        finally:
            await engine.dispose()

    run_async(checkout())
    assert committed(url, saga_id, order) == (False, False)
    assert dispatcher.sent == []
    with pytest.raises(SagaNotFound):
        rt.store.get(saga_id)


def test_a_start_in_a_savepoint_of_the_callers_that_rolls_back_publishes_nothing_while_the_outer_commits(
        rt: Runtime, dispatcher: RecordingDispatcher, url: str) -> None:
    order = uuid.uuid4().hex
    saga_id = f"aio-{uuid.uuid4()}"

    async def checkout() -> None:
        from sqlalchemy.ext.asyncio import AsyncSession

        engine = async_engine(url)
        try:
            async with AsyncSession(engine) as session:
                await session.execute(insert(ORDERS).values(id=order))
                savepoint = await session.begin_nested()
                await aio.start_saga(CHECKOUT, {"order": order}, saga_id=saga_id, session=session)
                await savepoint.rollback()
                await session.commit()
        finally:
            await engine.dispose()

    run_async(checkout())
    assert committed(url, saga_id, order) == (False, True)  # the order committed, the run went with its savepoint
    assert dispatcher.sent == []


# ------------------------------------------------------------------ in the caller's AsyncConnection (Core)


@pytest.mark.parametrize("commit", [True, False])
def test_an_async_connection_commits_or_rolls_back_the_run_with_the_callers_row(
        rt: Runtime, dispatcher: RecordingDispatcher, url: str, commit: bool) -> None:
    order = uuid.uuid4().hex

    async def checkout() -> str:
        engine = async_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(insert(ORDERS).values(id=order))
                saga_id = await aio.start_saga(CHECKOUT, {"order": order}, connection=conn)
                assert dispatcher.sent == []
                await (conn.commit() if commit else conn.rollback())
                return saga_id
        finally:
            await engine.dispose()

    saga_id = run_async(checkout())
    assert committed(url, saga_id, order) == (commit, commit)
    assert first_steps(dispatcher, saga_id) == (["reserve"] if commit else [])


def test_a_sync_session_or_another_object_is_refused_with_an_error_naming_what_to_use(rt: Runtime, url: str) -> None:
    engine = plain_engine(url)
    try:
        with Session(engine) as session:
            with pytest.raises(SagaError, match="AsyncSession"):
                run_async(aio.start_saga(CHECKOUT, {"order": "x"}, session=session))  # type: ignore[arg-type]
        with pytest.raises(SagaError, match="AsyncConnection"):
            run_async(aio.start_saga(CHECKOUT, {"order": "x"}, connection="conn"))  # type: ignore[arg-type]
        with pytest.raises(SagaError, match="not both"):
            run_async(aio.start_saga(CHECKOUT, {}, session=object(), connection=object()))  # type: ignore[arg-type]
    finally:
        engine.dispose()


# ------------------------------------------------------------------ start, signal, status, cancel, wait


def test_start_signal_status_cancel_and_wait_from_async_code(rt: Runtime, dispatcher: RecordingDispatcher) -> None:
    async def story() -> None:
        # Given two runs parked on their wait
        first, second = await asyncio.gather(aio.start_saga(CONFIRM, {}), aio.start_saga("aio.confirm", {}))
        assert [(await aio.get_saga(s)).state for s in (first, second)] == ["WAITING", "WAITING"]
        # When the first is signalled, it goes on to its next step (published)
        signalled = await aio.signal(first, "confirm", {"ok": True}, idempotency_key=f"confirm-{first}", who="alice")
        assert (signalled.duplicate, signalled.state) == (False, "RUNNING")
        assert (await aio.signal(first, "confirm", {"ok": True}, idempotency_key=f"confirm-{first}")).duplicate
        with pytest.raises(NotWaiting):
            await aio.signal(first, "nope")
        assert set(first_steps(dispatcher, first)) == {"ship"}  # (the duplicate re-sends what the signal sent)
        # and a wait with no time left says where the run is
        with pytest.raises(TimeoutError, match="RUNNING"):
            await aio.wait_for(first, timeout=0)
        # When the second is cancelled, it is compensated (nothing had run) and waiting for it returns at once
        cancelled = await aio.cancel(second, reason="customer changed their mind", who="bob")
        assert cancelled.state == "COMPENSATED"
        ended = await aio.wait_for(second, timeout=5)
        assert (ended.id, ended.state) == (second, "COMPENSATED")
        assert [e.detail for e in ended.events if e.type == "SagaCancelled"] == [
            {"by": "operator:bob", "who": "bob", "reason": "customer changed their mind"}]
        with pytest.raises(SagaNotFound):
            await aio.get_saga("no-such-saga")
        with pytest.raises(SagaNotFound):
            await aio.wait_for("no-such-saga")

    run_async(story())


def test_wait_for_polls_with_a_growing_interval_up_to_max_poll_and_checks_its_arguments(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def story() -> None:
        saga_id = await aio.start_saga(CONFIRM, {})

        async def fake_sleep(seconds: float) -> None:  # the clock moves, nobody sleeps
            slept.append(seconds)
            if len(slept) == 8:
                await aio.cancel(saga_id, reason="enough")

        monkeypatch.setattr(aio, "_sleep", fake_sleep)
        view = await aio.wait_for(saga_id, timeout=60, poll=0.1, max_poll=0.5)
        assert view.state == "COMPENSATED"
        for bad in ({"timeout": -1}, {"poll": 0}, {"poll": float("nan")}, {"poll": 2, "max_poll": 1},
                    {"timeout": True}):
            with pytest.raises(SagaError):
                await aio.wait_for(saga_id, **bad)

    run_async(story())
    assert slept == pytest.approx([0.1, 0.15, 0.225, 0.3375, 0.5, 0.5, 0.5, 0.5])
