"""The docs' async app (docs/guide/async.md, written out as `checkout_async.py` by tests/servers/test_aio_web.py)
served by uvicorn, with what the test needs around it:

- a meter of the event loop's lag: a task that sleeps 10 ms and records how late it wakes
  (`POST /lag/start` clears and starts it, `GET /lag` reports p50/p99/max in milliseconds);
- `POST /baseline/orders`: the request without the saga (the loop's cost of the web stack alone);
- `GET /blocking/orders/{saga_id}`: the status read the wrong way, the synchronous `get_saga` called
  inside an `async def` handler, to show the meter sees a blocked loop;
- `POST /orders/fail-before-commit`: the docs' checkout, then an error before the commit (the
  session closes without one).
"""
from __future__ import annotations

import asyncio
import statistics
from typing import Annotated

from checkout_async import OrderRow, app, db  # the docs' block
from fastapi import Depends, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession

from tasks.sagas import Order, order_with_approval
from workflows import aio, get_saga


class LagMeter:
    def __init__(self, every: float = 0.01) -> None:
        self.every = every
        self.lags: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.every)
            self.lags.append(loop.time() - before - self.every)

    def report(self) -> dict[str, float]:
        lags = sorted(self.lags) or [0.0]
        return {"n": len(self.lags), "p50_ms": 1000 * statistics.median(lags),
                "p99_ms": 1000 * lags[min(len(lags) - 1, int(0.99 * len(lags)))], "max_ms": 1000 * lags[-1]}


meter = LagMeter()


@app.post("/lag/start")
async def lag_start() -> dict[str, str]:
    meter.lags.clear()
    if meter.task is None:
        meter.task = asyncio.get_running_loop().create_task(meter.run())
    await asyncio.sleep(0.05)
    return {"meter": "running"}


@app.get("/lag")
async def lag() -> dict[str, float]:
    return meter.report()


@app.post("/baseline/orders", status_code=201)
async def baseline(order: Order) -> dict[str, str]:
    """The request without the saga: what parsing and validating 200 orders costs the loop by itself."""
    return {"order_id": order.order_id}


@app.get("/blocking/orders/{saga_id}")
async def blocking_status(saga_id: str) -> dict[str, str]:
    return {"saga_id": saga_id, "state": get_saga(saga_id).state}  # blocks the loop: what not to do


@app.post("/orders/fail-before-commit")
async def fail_before_commit(order: Order, saga_id: str, session: Annotated[AsyncSession, Depends(db)]) -> None:
    await aio.start_saga(order_with_approval, order.model_dump(mode="json"), saga_id=saga_id, session=session)
    session.add(OrderRow(id=order.order_id, customer_id=order.customer_id, saga_id=saga_id))
    await session.flush()  # both rows written in the transaction, then the handler fails
    raise HTTPException(409, "the view failed after the start: nothing committed")
