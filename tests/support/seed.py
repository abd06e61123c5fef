"""Many runs at once for the console's scale test: rows inserted in bulk, no worker, no engine.

`seed_runs(store, n)` writes `n` finished-looking runs of `order_fulfillment` (4 steps each, a
few history rows, a dead letter for every 50th) with `executemany` inserts in one transaction:
10,000 runs take a few seconds on PostgreSQL. States, ages and order ids vary so every filter of
the list has something to find. Test-only: it writes the tables directly, as no real path does.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import insert

from workflows.store.base import input_hash
from workflows.store.models import DeadLetterRow
from workflows.store.rows import EVENTS, SAGAS, STEPS

STATES = ("COMPLETED",) * 14 + ("COMPENSATED",) * 3 + ("RUNNING", "COMPENSATING", "FAILED")
STEP_NAMES = ("reserve_inventory", "process_payment", "create_shipment", "send_confirmation")


def seed_runs(store: Any, n: int, *, prefix: str = "seed", now: datetime | None = None,
              batch: int = 2000) -> list[str]:
    """Insert `n` runs; returns their ids (oldest first). Run i is `i * 30` seconds older than `now`."""
    now = now or datetime.now(timezone.utc)
    ids: list[str] = []
    with store.sessions.begin() as s:
        for lo in range(0, n, batch):
            runs, steps, events, dls = [], [], [], []
            for i in range(lo, min(n, lo + batch)):
                sid = f"{prefix}-{uuid.uuid4().hex[:16]}"
                ids.append(sid)
                state = STATES[i % len(STATES)]
                created = now - timedelta(seconds=30 * (n - i))
                data = {"order_id": f"{prefix}-order-{i}", "customer_id": f"cust-{i % 97}"}
                runs.append({"id": sid, "saga_type": "order_fulfillment", "style": "orchestrated", "state": state,
                             "version": 9, "input": data, "input_hash": input_hash("order_fulfillment", data),
                             "idempotency_key": f"{prefix}-key-{i}", "caused_by": "seed",
                             "failure_reason": None if state == "COMPLETED" else "step 'create_shipment' failed",
                             "deadline_at": None, "created_at": created, "updated_at": created + timedelta(seconds=2)})
                for j, name in enumerate(STEP_NAMES):
                    running = state in ("RUNNING", "COMPENSATING") and j == 2
                    steps.append({"saga_id": sid, "index": j, "name": name,
                                  "status": "RUNNING" if running else "SUCCEEDED", "attempts": 1,
                                  "compensation_attempts": 0, "result": {"ok": True}, "error": None,
                                  "task_id": f"{sid}.{name}.action.seed", "eta": None,
                                  "deadline_at": created + timedelta(seconds=60) if running else None,
                                  "started_at": created, "finished_at": created + timedelta(seconds=j),
                                  "compensated_at": None})
                events += [{"saga_id": sid, "at": created, "type": "SagaStarted", "step": None, "attempt": None,
                            "detail": {}},
                           {"saga_id": sid, "at": created + timedelta(seconds=2), "type": "SagaCompleted",
                            "step": None, "attempt": None, "detail": {}}]
                if i % 50 == 0:
                    dls.append({"id": f"dl-{sid}", "saga_id": sid, "step": "process_payment",
                                "kind": "compensation", "task_name": "payment.refund", "queue": "payment",
                                "args": [sid, "process_payment"], "kwargs": {}, "headers": {}, "attempts": 10,
                                "exception": "TransientServiceError: seeded", "traceback": "", "status": "OPEN",
                                "resolution": None, "created_at": created, "resolved_at": None, "sent_at": created})
            s.execute(insert(SAGAS), runs)
            s.execute(insert(STEPS), steps)
            s.execute(insert(EVENTS), events)
            if dls:
                s.execute(insert(DeadLetterRow.__table__), dls)
    return ids


def delete_runs(store: Any, prefix: str) -> None:
    """Remove what `seed_runs(prefix=...)` wrote (so no later test, or a sweep, meets the seeds)."""
    from sqlalchemy import delete

    like = f"{prefix}-%"
    with store.sessions.begin() as s:
        s.execute(delete(DeadLetterRow.__table__).where(DeadLetterRow.__table__.c.saga_id.like(like)))
        s.execute(delete(EVENTS).where(EVENTS.c.saga_id.like(like)))
        s.execute(delete(STEPS).where(STEPS.c.saga_id.like(like)))
        s.execute(delete(SAGAS).where(SAGAS.c.id.like(like)))
