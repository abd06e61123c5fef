"""The asyncio client under a real uvicorn with a real worker (PostgreSQL, Redis): the docs' async
FastAPI app (docs/guide/async.md), as written, served with a meter of its event loop's lag
(tests/support/aio_web.py).

- 200 orders placed at once (each in the handler's AsyncSession transaction), then their 200
  outcomes awaited at once: every one COMPLETED, the loop's lag p99 within a generous bound. The
  figures are printed (`pytest -s`), with those of 200 status reads done the blocking way.
- a handler that fails after the start, before its commit: no order row, no run, nothing published.
- an order above the approval limit: WAITING, approved by a signal, COMPLETED; another cancelled.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.support.databases import plain_engine
from tests.support.workers import WorkerProcess
from tests.support.interfaces import stop_process_group, wait_until
from workflows import SagaNotFound, get_saga
from workflows.operations.dead_letters import list_dead_letters

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "guide" / "async.md"
PG_URL = os.environ["SAGA_DATABASE_URL"]
STARTS = 200
LAG_P99_BOUND_MS = 500.0
"""Generous on purpose (a 2-core machine shared with other jobs; measured p99s are printed, 15 to 182 ms
here): a client that blocked the loop on each of 200 calls would be late by seconds, as the blocking
reads show."""


def docs_block() -> str:
    page = PAGE.read_text()
    section = page.split("<!-- section: async-app -->", 1)[1].split("<!-- /section: async-app -->", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert found, f"no python block in the async-app section of {PAGE.relative_to(ROOT)}"
    return found.group(1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sql(statement: str, **params: Any) -> Any:
    engine = plain_engine(PG_URL)
    try:
        with engine.begin() as c:
            result = c.execute(text(statement), params)
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def web(app: Any, running_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`uvicorn tests.support.aio_web:app` (the docs' block around it) on a free port; its base URL."""
    folder = tmp_path_factory.mktemp("async_app")
    (folder / "checkout_async.py").write_text(docs_block())
    sql("DROP TABLE IF EXISTS orders")  # the app's own table, as its migrations would make it
    sql("CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, customer_id VARCHAR(64) NOT NULL, "
        "saga_id VARCHAR(64) NOT NULL)")
    port = free_port()
    log = folder / "uvicorn.log"
    env = {**os.environ, "PYTHONPATH": f"{folder}:{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.support.aio_web:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited: {log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=60, what="uvicorn serving the docs' async app")
        yield base
    finally:
        stop_process_group(proc)
        sql("DROP TABLE IF EXISTS orders")


def burst(base: str, calls: list[tuple[str, str, dict[str, Any]]]) -> tuple[list[httpx.Response], dict[str, float]]:
    """Send every call (method, path, httpx arguments) at once, one connection each, with the app's
    lag meter running; the responses and the lag the app's event loop saw meanwhile."""
    async def go() -> tuple[list[httpx.Response], dict[str, float]]:
        limits = httpx.Limits(max_connections=len(calls) + 2, max_keepalive_connections=len(calls) + 2)
        async with httpx.AsyncClient(base_url=base, timeout=240, limits=limits) as client:
            assert (await client.post("/lag/start")).status_code == 200
            responses = await asyncio.gather(*(client.request(m, path, **kw) for m, path, kw in calls))
            lag = (await client.get("/lag")).json()
        return list(responses), lag

    return asyncio.run(go())


def big(order: dict[str, Any]) -> dict[str, Any]:
    """Above the approval limit (100.00): the saga waits for a manager."""
    order["items"][0]["price"] = "80.00"
    return order


def state(base: str, saga_id: str) -> str:
    return str(httpx.get(f"{base}/orders/{saga_id}", timeout=30).json()["state"])


def test_200_concurrent_orders_and_their_outcomes_keep_the_event_loop_responsive(
        web: str, order_factory: Callable[..., dict[str, Any]]) -> None:
    orders = [order_factory() for _ in range(STARTS)]
    for warm in (order_factory() for _ in range(3)):  # the app's first requests (its pools, caches) unmeasured
        assert httpx.post(f"{web}/orders", json=warm, timeout=30).status_code == 201
    _, baseline_lag = burst(web, [("POST", "/baseline/orders", {"json": o}) for o in orders])

    # When 200 orders are placed at once (the row and the saga in each handler's transaction)
    placed, start_lag = burst(web, [("POST", "/orders", {"json": o}) for o in orders])
    assert [r.status_code for r in placed] == [201] * STARTS, next(r.text for r in placed if r.status_code != 201)
    saga_ids = [r.json()["saga_id"] for r in placed]
    assert len(set(saga_ids)) == STARTS

    # and their 200 outcomes are awaited at once (aio.wait_for, polling with backoff)
    ended, wait_lag = burst(web, [("GET", f"/orders/{s}/outcome", {"params": {"timeout": 200}}) for s in saga_ids])
    assert [r.status_code for r in ended] == [200] * STARTS
    assert {r.json()["state"] for r in ended} == {"COMPLETED"}
    rows = sql("SELECT id, saga_id FROM orders WHERE id = ANY(:ids)", ids=[o["order_id"] for o in orders])
    assert sorted(r.saga_id for r in rows) == sorted(saga_ids)  # each order row beside its run

    # For comparison: 200 status reads at once, through aio and the blocking way
    aio_reads, aio_read_lag = burst(web, [("GET", f"/orders/{s}", {}) for s in saga_ids])
    blocking_reads, blocking_lag = burst(web, [("GET", f"/blocking/orders/{s}", {}) for s in saga_ids])
    assert {r.json()["state"] for r in aio_reads + blocking_reads} == {"COMPLETED"}

    for what, lag in (("200 requests without a saga (the web stack alone)", baseline_lag),
                      ("200 starts (aio, in the handler's transaction)", start_lag),
                      ("200 outcomes awaited (aio.wait_for)", wait_lag),
                      ("200 status reads (aio.get_saga)", aio_read_lag),
                      ("200 status reads, blocking (get_saga in async def)", blocking_lag)):
        print(f"\nevent loop lag, {what}: p50 {lag['p50_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms, "
              f"max {lag['max_ms']:.1f} ms over {lag['n']} ticks of 10 ms")
    # Then the loop kept serving: its 10 ms ticks were late by less than the bound, at the 99th percentile
    for lag in (start_lag, wait_lag, aio_read_lag):
        assert lag["n"] > 0 and lag["p99_ms"] < LAG_P99_BOUND_MS, lag
    # and the meter sees a blocked loop when there is one (the same reads, made the blocking way)
    assert blocking_lag["max_ms"] > aio_read_lag["p99_ms"], (blocking_lag, aio_read_lag)


def test_a_handler_that_fails_before_its_commit_writes_nothing_and_publishes_nothing(
        web: str, order_factory: Callable[..., dict[str, Any]]) -> None:
    # When the handler starts the saga in its transaction, then fails before the commit
    order, saga_id = order_factory(), str(uuid.uuid4())
    r = httpx.post(f"{web}/orders/fail-before-commit", params={"saga_id": saga_id}, json=order, timeout=30)
    assert r.status_code == 409, r.text
    # and another order is placed and ends (the worker has taken everything published before it)
    placed = httpx.post(f"{web}/orders", json=order_factory(), timeout=30).json()
    assert httpx.get(f"{web}/orders/{placed['saga_id']}/outcome", params={"timeout": 60},
                     timeout=90).json()["state"] == "COMPLETED"
    # Then the failed one left no run, no order row, and no message (a step for a missing run
    # would have become a dead letter)
    with pytest.raises(SagaNotFound):
        get_saga(saga_id)
    assert httpx.get(f"{web}/orders/{saga_id}", timeout=30).status_code == 404
    assert sql("SELECT id FROM orders WHERE id = :id", id=order["order_id"]) == []
    assert list_dead_letters(status=None, saga_id=saga_id) == []


def test_an_order_is_approved_by_a_signal_and_another_cancelled_from_async_handlers(
        web: str, order_factory: Callable[..., dict[str, Any]]) -> None:
    approved = httpx.post(f"{web}/orders", json=big(order_factory()), timeout=30).json()["saga_id"]
    cancelled = httpx.post(f"{web}/orders", json=big(order_factory()), timeout=30).json()["saga_id"]
    for saga_id in (approved, cancelled):
        wait_until(lambda s=saga_id: state(web, s) == "WAITING", timeout=60, what=f"{saga_id} WAITING")

    # the manager approves the first: it goes on and completes
    r = httpx.post(f"{web}/orders/{approved}/approval", json={"approved": True, "reason": "known customer"},
                   timeout=30)
    assert r.status_code == 200 and r.json()["state"] in ("RUNNING", "COMPLETED"), r.text
    # a bad payload is refused, naming the field
    bad = httpx.post(f"{web}/orders/{cancelled}/approval", json={"reason": "x"}, timeout=30)
    assert bad.status_code == 422 and "approved" in bad.text
    # the customer cancels the second: its reservation is released
    assert httpx.post(f"{web}/orders/{cancelled}/cancel", timeout=30).json()["state"] in ("COMPENSATING",
                                                                                        "COMPENSATED")
    outcomes = {s: httpx.get(f"{web}/orders/{s}/outcome", params={"timeout": 60}, timeout=90).json()["state"]
                for s in (approved, cancelled)}
    assert outcomes == {approved: "COMPLETED", cancelled: "COMPENSATED"}
    assert [e.type for e in get_saga(cancelled).events if e.type == "SagaCancelled"] == ["SagaCancelled"]
    # the approval sent again (a retried request) changes nothing; an unknown order is a 404
    again = httpx.post(f"{web}/orders/{approved}/approval", json={"approved": True, "reason": "known customer"},
                       timeout=30)
    assert (again.status_code, again.json()["state"]) == (200, "COMPLETED")
    assert httpx.post(f"{web}/orders/{uuid.uuid4()}/approval", json={"approved": True}, timeout=30).status_code == 404
