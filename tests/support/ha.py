"""Sagas under a broker's failure: start many order sagas through a client app, break the broker
while they are in flight, sweep, then check every invariant a chaos run checks.

    load = Load(client, n=150)
    load.start()                      # n order_fulfillment runs, their first steps published
    group.kill_master()               # the broker fails under load
    left = load.wait_terminal(bound=120)
    figures, violations = load.check()

`check` is `bench/chaos_invariants.check`: every saga terminal; a COMPLETED saga has exactly one
reservation, charge, shipment and confirmation, a COMPENSATED one every effect undone once; no
payment charged twice; stock consistent. The sweeper runs every 2 s in this process (as celery
beat would), through the client app: it sends a first step again that a lost message left unsent,
and times out a step whose message the broker lost.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery
from sqlalchemy import func, select

TERMINAL = ("COMPLETED", "COMPENSATED", "FAILED")


def order(run_id: str, i: int, sku: str) -> dict[str, Any]:
    return {"order_id": f"ha-{run_id}-{i}", "customer_id": f"c-{i % 37}", "email": "c@example.com",
            "items": [{"sku": sku, "quantity": 1 + i % 3, "price": "9.99"}],
            "payment": {"card": "4242424242424242"},
            "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}


class Load:
    """`n` order sagas started through `client` (a Celery app on the broker under test)."""

    def __init__(self, client: Celery, n: int, sweep_every: float = 2.0, database_url: str | None = None) -> None:
        from tasks.inventory import restock
        from workflows import get_runtime
        from workflows.runtime.container import Runtime

        self.client, self.n, self.sweep_every = client, n, sweep_every
        self.run_id = uuid.uuid4().hex[:8]
        self.skus = {f"HA-{self.run_id}-{k}": 1_000_000 for k in range(3)}
        restock(self.skus)
        settings = get_runtime().settings
        if database_url is not None:  # starts, sweeps and checks through this URL (PgBouncer)
            settings = settings.model_copy(update={"database_url": database_url})
        self.rt = Runtime(app=client, settings=settings)  # publishes through the broker under test
        self.ids: list[str] = []
        self.sweeps = self.sweep_errors = 0
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, daemon=True)

    def start(self) -> float:
        """Start every saga (each publish is retried through a broker outage); seconds it took."""
        from tests.support.runs import create_run
        from workflows import registry
        from workflows.runtime.dispatch import CeleryDispatcher

        t0 = time.monotonic()
        skus = sorted(self.skus)
        definition = registry.get("order_fulfillment")
        dispatcher = CeleryDispatcher(self.client)
        for i in range(self.n):
            data = definition.validate_input(order(self.run_id, i, skus[i % 3]))
            created = create_run(self.rt.store, definition, data, timing=self.rt.timing)
            assert created.state is not None and created.command is not None
            dispatcher.send_step(created.state, created.command)
            self.ids.append(created.saga_id)
        self._sweeper.start()
        return time.monotonic() - t0

    def _sweep(self) -> None:
        from workflows.operations.sweeper import sweep

        while not self._stop.wait(self.sweep_every):
            try:
                sweep(self.rt)
                self.sweeps += 1
            except Exception:  # noqa: BLE001 (the broker is failing over: the next sweep retries)
                self.sweep_errors += 1

    def not_terminal(self) -> int:
        from workflows.store.models import SagaRow

        with self.rt.store.sessions() as s:  # type: ignore[attr-defined]
            return int(s.scalar(select(func.count()).select_from(SagaRow).where(
                SagaRow.id.in_(self.ids), SagaRow.state.not_in(TERMINAL))) or 0)

    def wait_for(self, done: Callable[[int], bool], bound: float) -> int:
        """Poll until `done(not terminal)`, at most `bound` seconds; returns the last count."""
        deadline = time.monotonic() + bound
        left = self.not_terminal()
        while not done(left) and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.not_terminal()
        return left

    def wait_terminal(self, bound: float) -> int:
        try:
            return self.wait_for(lambda left: left == 0, bound)
        finally:
            self._stop.set()
            self._sweeper.join(30)

    def check(self, broker_dead_letters: set[str] | None = None) -> tuple[dict[str, Any], list[str]]:
        from bench.chaos_invariants import check, load
        from tasks.inventory import available

        stock = {sku: (start, available(sku) or 0) for sku, start in self.skus.items()}
        figures, violations = check(load(self.rt.store, self.ids), self.ids, stock, broker_dead_letters)
        figures.update(sweeps=self.sweeps, sweep_errors=self.sweep_errors)
        return figures, violations
