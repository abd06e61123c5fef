"""Chaos for choreographies: many sagas of both examples, flaky services, worker pools SIGKILLed.

Three pools consume the event queues (each queue served by two of them); services fail at random
(transient: retried; permanent: a failure event, or a dead letter for a refused refund); a killer
SIGKILLs a random pool every couple of seconds and restarts it; the sweeper relays what killed
publishers left. Redis' visibility timeout is short, so a killed pool's messages come back.
Then the invariants: every saga ended; no effect doubled; a completed order has every effect, a
compensated one none left (stock back); a FAILED saga has an open dead letter saying why; every
delivery was handled at most once.
"""
from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from tests.support.workers import WorkerProcess
from tests.support.choreo import DECLINED, NAMESPACE, UNSERVED, Cluster, handled, order, sold_out
from tasks.choreography import parallel, sequential
from tasks.common import arm_fault, transaction
from tasks.inventory import available
from tasks.models import Notification, Payment, Reservation, Shipment
from workflows import get_runtime, get_saga
from workflows.choreography.operations import sweep_choreographies

N = int(os.environ.get("CHOREO_CHAOS_N", "40"))
SEED = int(os.environ.get("CHOREO_CHAOS_SEED", "8"))
POOLS = {"a": "orders,inventory,payment", "b": "payment,shipping,notification,orders",
         "c": "inventory,shipping,notification"}
FAULTS = [("inventory", False, "any", 0.10), ("shipping", False, "action", 0.20), ("payment", True, "any", 0.05)]
TERMINAL = ("COMPLETED", "COMPENSATED", "FAILED")


def start_pool(name: str, env: dict[str, str]) -> WorkerProcess:
    queues = ",".join(f"{NAMESPACE}.{s}" for s in POOLS[name].split(","))
    return WorkerProcess(f"{NAMESPACE}-chaos-{name}", queues, concurrency=2, env=env)


def start_sagas(rng: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for i in range(N):
        flavour = rng.choice(["ok", "ok", "ok", "declined", "sold_out", "unserved"])
        o = order(**{"ok": {}, "declined": DECLINED, "sold_out": sold_out(), "unserved": UNSERVED}[flavour])
        ch = sequential if i % 2 else parallel
        out.append((ch.start("OrderCreated", o), ch.name, o))
        time.sleep(0.05)
    return out


def check(saga_id: str, kind: str, o: dict[str, Any]) -> list[str]:
    """The invariants of one saga; the violations found."""
    view = get_saga(saga_id)
    bad = []
    with transaction() as s:
        res = list(s.scalars(select(Reservation.status).where(Reservation.saga_id == saga_id)))
        pay = list(s.scalars(select(Payment.status).where(Payment.saga_id == saga_id)))
        ship = list(s.scalars(select(Shipment.status).where(Shipment.saga_id == saga_id)))
        note = list(s.scalars(select(Notification.kind).where(Notification.saga_id == saga_id)))
    if any(len(x) > 1 for x in (res, pay, ship, note)):
        bad.append(f"doubled effect {res} {pay} {ship} {note}")
    deliveries = handled(saga_id)
    if len(deliveries) != len(set(deliveries)):
        bad.append(f"a delivery handled twice: {Counter(deliveries).most_common(2)}")
    sku = o["items"][0]["sku"]
    if not sku.endswith("SOLD-OUT") and available(sku) != (8 if res == ["RESERVED"] else 10):
        bad.append(f"stock {available(sku)} with reservation {res}")
    if view.state == "COMPLETED":
        want_ship = ["CREATED"] if kind == "order_sequential" else []
        want_note = [] if kind == "order_sequential" else ["order_confirmation"]
        if (res, pay, ship, note) != (["RESERVED"], ["CHARGED"], want_ship, want_note):
            bad.append(f"completed but effects {res} {pay} {ship} {note}")
    elif view.state == "COMPENSATED":
        if "RESERVED" in res or "CHARGED" in pay or "CREATED" in ship:
            bad.append(f"compensated but effects left {res} {pay} {ship}")
    elif view.state == "FAILED":
        if not [d for d in view.dead_letters if d.kind == "event" and d.status == "OPEN"]:
            bad.append("FAILED without an open dead letter")
    else:
        bad.append(f"not terminal: {view.state}")
    return [f"{saga_id} ({kind}, {view.state}): {b}" for b in bad]


def test_choreographies_keep_every_invariant_under_kills_and_faults(app):  # type: ignore[no-untyped-def]
    rng = random.Random(SEED)
    # short on purpose (a killed pool's messages come back soon): the check would refuse it
    env = Cluster("redis").env(SAGA_REDIS_VISIBILITY_TIMEOUT="10", SAGA_REDIS_VISIBILITY_CHECK="0")
    pools = {name: start_pool(name, env) for name in POOLS}
    for w in pools.values():
        w.wait_ready(app, timeout=60)
    for service, permanent, operation, rate in FAULTS:
        arm_fault(service, times=10**9, permanent=permanent, operation=operation, rate=rate)
    stop = threading.Event()
    kills = Counter()

    def killer() -> None:
        while not stop.wait(rng.uniform(1.5, 3.0)):
            name = rng.choice(sorted(pools))
            pools[name].kill()
            kills[name] += 1
            pools[name] = start_pool(name, env)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        sagas = start_sagas(rng)
        time.sleep(6)
    finally:
        stop.set()
        thread.join()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sweep_choreographies(get_runtime(), datetime.now(timezone.utc))  # what celery beat would do
            if all(get_saga(sid).state in TERMINAL for sid, _, _ in sagas):
                break
            time.sleep(1.0)
        violations = [v for sid, kind, o in sagas for v in check(sid, kind, o)]
    finally:
        for w in pools.values():
            w.stop()

    states = Counter(get_saga(sid).state for sid, _, _ in sagas)
    print(f"choreography chaos: {dict(states)}, kills {dict(kills)}")
    assert violations == [], "\n".join(violations[:20])
    assert sum(kills.values()) >= 3
    assert states["COMPLETED"] > 0 and states["COMPENSATED"] > 0
