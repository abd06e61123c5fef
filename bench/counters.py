"""What one saga costs, counted where it is spent: DB round trips and broker messages.

Every process that imports this module (the bench's workers, through SAGA_EXTRA_MODULES, and
the bench driver) counts in memory:
- `statements`: SQL statements sent through SQLAlchemy (`before_cursor_execute`) or on the driver's
  cursor (the store's hot path, `workflows.store._driver.STATEMENT_LISTENERS`);
- `checkouts`: pool checkouts (no round trip: the engines do not pre-ping; see workflows/db.py);
- `begins`, `commits`, `rollbacks`: transaction boundaries, each a round trip (psycopg 3 and psycopg2
  send BEGIN before a transaction's first statement; a read-only session ends with ROLLBACK),
  none on a connection in autocommit mode (`workflows.db.statement_engine`);
- `messages`: task messages published (`before_task_publish`: sends, chain steps, retries).
A worker process adds its counts to the Redis hash `bench:<run id>:counters` after every task, in one
pipelined round trip (the same for every configuration); the driver flushes its own before it
reads the hash. Deltas of the hash around a phase, divided by its sagas, are the cost per saga.
"""
from __future__ import annotations

import os
from typing import Any

import redis
from celery.signals import before_task_publish, task_postrun
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from workflows.store._driver import STATEMENT_LISTENERS

KEY = f"bench:{os.environ.get('BENCH_RUN_ID', 'default')}:counters"
FIELDS = ("statements", "checkouts", "begins", "commits", "rollbacks", "messages")
TRACE = os.environ.get("BENCH_TRACE_SQL") == "1"
"""Print every statement (first line) to stderr: to see what a step costs, one by one."""

_counts: dict[str, int] = dict.fromkeys(FIELDS, 0)
_client: tuple[int, redis.Redis] | None = None


def _bump(name: str) -> None:
    _counts[name] += 1


@event.listens_for(Engine, "before_cursor_execute")
def _on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
    _on_driver_statement(statement)


def _on_driver_statement(statement: str) -> None:
    _counts["statements"] += 1
    if TRACE:
        import sys

        print(f"[sql {os.getpid()}] {statement.split(chr(10))[0][:160]}", file=sys.stderr)


STATEMENT_LISTENERS.append(_on_driver_statement)


def _sends(conn: Any) -> bool:
    """Whether BEGIN/COMMIT/ROLLBACK on `conn` reach the server: a driver in autocommit mode sends none."""
    return not getattr(getattr(conn.connection, "dbapi_connection", None), "autocommit", False)


@event.listens_for(Engine, "commit")
def _on_commit(conn: Any) -> None:
    if _sends(conn):
        _bump("commits")


@event.listens_for(Engine, "rollback")
def _on_rollback(conn: Any) -> None:
    if _sends(conn):
        _bump("rollbacks")


@event.listens_for(Pool, "checkout")
def _on_checkout(*_: Any) -> None:
    _bump("checkouts")


@before_task_publish.connect
def _on_publish(**_: Any) -> None:
    _bump("messages")


def redis_client() -> redis.Redis:
    """One Redis client per process (never inherited across a fork), on the broker's database."""
    global _client
    if _client is None or _client[0] != os.getpid():
        url = os.environ.get("SAGA_BROKER_URL", "redis://127.0.0.1:6379/13")
        _client = (os.getpid(), redis.Redis.from_url(url))
    return _client[1]


def flush(client: redis.Redis | None = None) -> None:
    """Add this process's counts to the shared hash and zero them."""
    pending = {k: v for k, v in _counts.items() if v}
    if not pending:
        return
    pipe = (client or redis_client()).pipeline(transaction=False)
    for k, v in pending.items():
        pipe.hincrby(KEY, k, v)
    pipe.execute()
    for k in pending:
        _counts[k] = 0


def totals(client: redis.Redis) -> dict[str, int]:
    raw = client.hgetall(KEY)
    return {f: int(raw.get(f.encode(), 0)) for f in FIELDS}


@task_postrun.connect
def _after_task(**_: Any) -> None:
    flush()


@event.listens_for(Engine, "begin")
def _on_begin(conn: Any) -> None:
    # the driver sends BEGIN as its own round trip before a transaction's first statement
    # (not in autocommit mode).
    if _sends(conn):
        _bump("begins")
