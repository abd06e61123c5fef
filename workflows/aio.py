"""The asyncio client: start, signal, read, cancel and wait for sagas from `async def` code
(FastAPI and Starlette handlers) without blocking the event loop.

    from workflows import aio

    saga_id = await aio.start_saga(checkout, order, idempotency_key=f"order-{order_id}")
    saga_id = await aio.start_saga(checkout, order, session=async_session)   # in the caller's transaction
    view = await aio.get_saga(saga_id)
    await aio.signal(saga_id, "approval", {"approved": True}, idempotency_key="approval-1001")
    await aio.cancel(saga_id, reason="the customer cancelled")
    view = await aio.wait_for(saga_id, timeout=60)

Each call is the synchronous client's, run on a thread pool of this module's own, at most
`SAGA_ASYNC_THREADS` (10) at once in a process; more calls queue for a thread without holding the
loop. Same validation, same errors, same idempotency as the synchronous API (which stays as it is):
there is one store and one decision loop, not an async copy of them that could drift.

`session=` (SQLAlchemy's `AsyncSession`) or `connection=` (`AsyncConnection`): the run is written on
the caller's own connection, through its synchronous view (`run_sync`, whose I/O goes through the
async driver: nothing blocks the loop), in a SAVEPOINT of the caller's transaction, exactly as the
synchronous `start_saga(session=)`. Step 1 is published after the caller's outermost COMMIT (the
same after-commit hook on the sync connection the async one wraps); that publish runs on the pool
and `await session.commit()` returns once it is done. Rolled back, closed without a commit: nothing
is published, nothing is written.

A cancelled `await` (a client that hung up) does not undo a call whose thread had begun: the start or
signal may still be recorded. An idempotency key makes the retry safe, as with the synchronous API.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from workflows.core.definition import Saga
from workflows.core.errors import SagaError
from workflows.core.views import SagaView, Signalled
from workflows.operations import actions, client, signals
from workflows.runtime.container import get_runtime

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["cancel", "get_saga", "signal", "start_saga", "wait_for"]

T = TypeVar("T")

_sleep = asyncio.sleep
"""`wait_for`'s pause between two reads (a test replaces it to move the clock instead)."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The pool, made at the first call with the runtime's `async_threads`."""
    global _pool
    with _pool_lock:
        if _pool is None:
            n = get_runtime().settings.async_threads
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise SagaError(f"SAGA_ASYNC_THREADS must be a whole number >= 1 (got {n!r})")
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="saga-aio")
        return _pool


async def _call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the pool, in a copy of the caller's context (as `asyncio.to_thread`)."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(_executor(), functools.partial(ctx.run, fn, *args, **kwargs))


# ------------------------------------------------------------------ starting

async def start_saga(saga: Saga | str, data: Any, *, idempotency_key: str | None = None,
                     saga_id: str | None = None, session: AsyncSession | None = None,
                     connection: AsyncConnection | None = None, start_at: datetime | None = None,
                     countdown: float | None = None, version: int | None = None) -> str:
    """`workflows.start_saga`, awaited; `session=`/`connection=` take SQLAlchemy's `AsyncSession` and
    `AsyncConnection` (to the saga store's database, as the synchronous ones). Returns the saga id."""
    if session is None and connection is None:
        return await _call(client.start_saga, saga, data, idempotency_key=idempotency_key, saga_id=saga_id,
                           start_at=start_at, countdown=countdown, version=version)
    if session is not None and connection is not None:
        raise SagaError("give session= or connection=, not both")
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    rt = get_runtime()

    def in_transaction(tx: Session | Connection) -> str:  # on the caller's sync view, in SQLAlchemy's greenlet
        with rt.tracing.segment(saga if isinstance(saga, str) else saga.name, saga_id, "start") as segment:
            started, t = client.record_start(rt, saga, data, idempotency_key=idempotency_key, saga_id=saga_id,
                                             tx=tx, start_at=start_at, countdown=countdown, version=version,
                                             trace=segment.context)
            segment.annotate(id=started)
        if t is not None:  # published after the commit under the run's first segment (`t.after.trace`)
            rt.store.after_commit(tx, _off_loop(client.first_step_publisher(rt, t)),
                                  check=_off_loop(client.run_survived(rt, t)))
        return started

    if session is not None:
        if not isinstance(session, AsyncSession):
            raise SagaError(f"session= takes a sqlalchemy AsyncSession here (got {type(session).__name__}); "
                            "a sync Session goes to workflows.start_saga")
        return await session.run_sync(in_transaction)
    if not isinstance(connection, AsyncConnection):
        raise SagaError(f"connection= takes a sqlalchemy AsyncConnection here (got {type(connection).__name__}); "
                        "a sync Connection goes to workflows.start_saga")
    return await connection.run_sync(in_transaction)


def _off_loop(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn` for the after-commit hook. Called by an AsyncSession's or AsyncConnection's commit, it is
    in SQLAlchemy's greenlet on the event loop's thread: `fn` (a broker publish, a store read) runs on
    the pool and the commit awaits it. Called anywhere else (a sync commit), it runs in place."""
    from sqlalchemy.util import await_
    from sqlalchemy.util.concurrency import in_greenlet

    def call() -> T:
        if in_greenlet():
            return await_(_call(fn))
        return fn()

    return call


# ------------------------------------------------------------------ reading, signalling, cancelling

async def get_saga(saga_id: str) -> SagaView:
    """The run's state, every step, its history and its dead letters. Raises `SagaNotFound`."""
    return await _call(client.get_saga, saga_id)


async def signal(saga_id: str, name: str, payload: Any = None, *, idempotency_key: str | None = None,
                 who: str = "operator") -> Signalled:
    """`workflows.signal`, awaited: send signal `name` with `payload` to run `saga_id`."""
    return await _call(signals.signal, saga_id, name, payload, idempotency_key=idempotency_key, who=who)


async def cancel(saga_id: str, *, reason: str, who: str = "operator") -> SagaView:
    """Force compensation of a running saga (the operator action `cancel`), awaited."""
    return await _call(actions.cancel, saga_id, reason=reason, who=who)


# ------------------------------------------------------------------ waiting for the end

async def wait_for(saga_id: str, timeout: float = 30.0, *, poll: float = 0.05, max_poll: float = 1.0) -> SagaView:
    """Await the end of run `saga_id` (COMPLETED, COMPENSATED or FAILED) and return its view; raises
    `TimeoutError` after `timeout` seconds, `SagaNotFound` for an unknown id.

    It polls the run's state (one small read, on the pool): at once, then after `poll` seconds, each
    interval 1.5 times the one before, at most `max_poll` seconds apart. A waiter costs at most one
    read a `max_poll` once it has waited a few seconds; the loop sleeps in between."""
    for what, value in (("timeout", timeout), ("poll", poll), ("max_poll", max_poll)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise SagaError(f"{what} must be a number of seconds >= 0 (got {value!r})")
    if poll <= 0 or max_poll < poll:
        raise SagaError(f"poll must be > 0 and max_poll >= poll (got poll={poll!r}, max_poll={max_poll!r})")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    interval = float(poll)
    while True:
        run = await _call(get_runtime().store.load, saga_id)
        if run.status.terminal:
            return await get_saga(saga_id)
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"saga {saga_id} is still {run.status.value} after {timeout}s")
        await _sleep(min(interval, left))
        interval = min(interval * 1.5, max_poll)
