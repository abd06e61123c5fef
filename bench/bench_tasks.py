"""The bench's own tasks and sagas, loaded into its workers with SAGA_EXTRA_MODULES=bench.bench_tasks.

Configurations (see bench/run.py):
- `baseline`: a bare Celery chain of four `bench.noop`;
- `baseline_state`: a chain of four `bench.stateful`, each committing one row UPDATE;
- `saga`: `bench.noop4`, four no-op steps with no-op compensations;
- `saga_failure`: `bench.fail3`, whose third step fails for good (compensates steps 2 and 1);
- `queues_state`: the chain with state, each link routed to its own queue (`SERVICE_QUEUES`);
- `saga_queues`: `bench.queues4`, four no-op steps each on its own queue (the seeds' shape:
  inventory, payment, shipping, notification), all consumed by the one bench worker (so each
  step follows the one before it inline: the worker consumes its queue);
- `queues_state_pools`, `saga_queues_pools`: the same two, on `POOL_QUEUES`, each consumed by a
  worker of its own (a pool per service, the seeds' deployment): every step is a message;
- `group_state`: a Celery `group` of four `bench.stateful` (one UPDATE each), all at once;
- `saga_group`: `bench.group4`, one parallel group of four no-op steps.
(`dbos` runs in bench/dbos_peer.py.) Everything runs on the queue `bench` (and the four
`SERVICE_QUEUES`), which only bench workers consume. Two bench runs at once (or the smoke test in
someone's `make test`) may run each other's messages: that disturbs their numbers, never their
results, because whatever a task must record travels in its message (the last link of a bare chain
gets the Redis hash its finish time goes to; the chain with state and the sagas are seen finished
in their rows).
"""
from __future__ import annotations

import os
import time

from celery import shared_task
from sqlalchemy import text

from workflows import Parallel, PermanentError, Saga, Step, StepContext, get_runtime, register_saga, step_task

from . import counters

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
SERVICES = ("inventory", "payment", "shipping", "notification")
SERVICE_QUEUES = tuple(f"{QUEUE}-{service}" for service in SERVICES)
POOL_QUEUES = tuple(f"{QUEUE}-pool-{service}" for service in SERVICES)
"""The same four services, each consumed by a bench worker of its own (`bench/run.py`'s pools)."""
DONE_KEY = f"bench:{os.environ.get('BENCH_RUN_ID', 'default')}:done"
"""This run's hash of chain id -> finish time (read by the driver; passed to the last link)."""
STATE_TABLE = "bench_chain_state"

CREATE_STATE_TABLE = text(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} ("
                          "id varchar(64) PRIMARY KEY, n integer NOT NULL DEFAULT 0, updated_at timestamptz)")
INSERT_STATE = text(f"INSERT INTO {STATE_TABLE} (id) VALUES (:id)")
UPDATE_STATE = text(f"UPDATE {STATE_TABLE} SET n = n + 1, updated_at = now() WHERE id = :id")


def _done(done_key: str, chain_id: str) -> None:
    counters.redis_client().hset(done_key, chain_id, repr(time.time()))


def statement_engine():  # type: ignore[no-untyped-def]
    """The store's own autocommit engine: a chain task's UPDATE is one statement and one round
    trip, as a saga's transition is (the least a task that commits its state can pay)."""
    from workflows.store.db import statement_engine as engine

    return engine(get_runtime().settings.resolved_database_url())


# ------------------------------------------------------------------ chains


@shared_task(name="bench.noop", queue=QUEUE, ignore_result=True)
def noop(chain_id: str, done: str | None = None) -> None:
    """Nothing; the last link records when the chain finished in the hash `done`."""
    if done:
        _done(done, chain_id)


@shared_task(name="bench.stateful", queue=QUEUE, ignore_result=True)
def stateful(chain_id: str) -> None:
    """Commit one row UPDATE: the least any saga that persists its state must pay per step (the
    driver sees the chain finished when its row counts 4)."""
    with statement_engine().connect() as c:
        c.execute(UPDATE_STATE, {"id": chain_id})
        c.commit()


# ------------------------------------------------------------------ sagas


@step_task("bench.step", queue=QUEUE)
def noop_step(ctx: StepContext, data: dict) -> None:
    return None


@step_task("bench.undo", queue=QUEUE)
def noop_undo(ctx: StepContext, data: dict) -> None:
    return None


@step_task("bench.fail", queue=QUEUE)
def failing_step(ctx: StepContext, data: dict) -> None:
    raise PermanentError(f"bench: {ctx.step} fails on purpose")


def _step(name: str, action=noop_step, undo=noop_undo) -> Step:  # type: ignore[no-untyped-def]
    return Step(name, action=action, compensation=undo)


ROUTED = [(step_task(f"bench.{s}_step", queue=q)(noop_step.fn), step_task(f"bench.{s}_undo", queue=q)(noop_undo.fn))
          for s, q in zip(SERVICES, SERVICE_QUEUES)]
"""A no-op step and compensation on each of the four service queues."""
POOLED = [(step_task(f"bench.pool_{s}_step", queue=q)(noop_step.fn),
           step_task(f"bench.pool_{s}_undo", queue=q)(noop_undo.fn)) for s, q in zip(SERVICES, POOL_QUEUES)]
"""The same on the four pool queues (one worker each)."""


NOOP4 = register_saga(Saga("bench.noop4", steps=[_step(f"s{i}") for i in range(1, 5)],
                           description="four no-op steps with no-op compensations"))
FAIL3 = register_saga(Saga("bench.fail3", steps=[_step("s1"), _step("s2"), _step("s3", failing_step), _step("s4")],
                           description="step 3 fails for good: compensations of steps 2 and 1 run"))
QUEUES4 = register_saga(Saga("bench.queues4", steps=[_step(f"s{i + 1}", a, u) for i, (a, u) in enumerate(ROUTED)],
                             description="four no-op steps, each on its own queue"))
POOLS4 = register_saga(Saga("bench.pools4", steps=[_step(f"s{i + 1}", a, u) for i, (a, u) in enumerate(POOLED)],
                            description="four no-op steps, each on the queue of a pool of its own"))
GROUP4 = register_saga(Saga("bench.group4", steps=[Parallel("four", [_step(f"b{i}") for i in range(1, 5)])],
                             description="one parallel group of four no-op steps"))
