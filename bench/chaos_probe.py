"""Loaded into the chaos pools only (SAGA_EXTRA_MODULES=bench.chaos_probe): counts the messages
they start handling, in a Redis (CHAOS_PROBE_URL: the broker's, or another beside RabbitMQ) under
chaos:<CHAOS_RUN_ID>:*.

- deliveries: every message a pool process starts;
- redelivered: those Celery marks redelivered (a dead worker's message restored after the
  visibility timeout, or requeued by reject_on_worker_lost);
- repeats: HINCRBY per (task id, retry number): a count above 1 is a message handled again
  (a redelivery, or a duplicate published by a recovery);
- busy: a field per pool process ("<node>|<pid>") while it handles a message, which the killer
  reads to aim at a pool that has work in flight (see `busy_nodes`).
"""
from __future__ import annotations

import os
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        url = os.environ.get("CHAOS_PROBE_URL") or os.environ["SAGA_BROKER_URL"]
        _client = redis.Redis.from_url(url, socket_timeout=2)
    return _client


@task_prerun.connect
def _count(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    run = os.environ.get("CHAOS_RUN_ID")
    if not run or sender is None:
        return
    req = sender.request
    p = _redis().pipeline()
    p.incr(f"chaos:{run}:deliveries")
    if (req.delivery_info or {}).get("redelivered"):
        p.incr(f"chaos:{run}:redelivered")
    p.hincrby(f"chaos:{run}:repeats", f"{task_id}:{req.retries or 0}", 1)
    p.hset(f"chaos:{run}:busy", f"{req.hostname}|{os.getpid()}", task_id or "")
    p.execute()


@task_postrun.connect
def _done(sender: Any = None, **_: Any) -> None:
    run = os.environ.get("CHAOS_RUN_ID")
    if not run or sender is None:
        return
    _redis().hdel(f"chaos:{run}:busy", f"{sender.request.hostname}|{os.getpid()}")


def busy_nodes(client: redis.Redis, run: str) -> set[str]:
    """The nodes (worker names) with a process handling a message now."""
    return {f.decode().split("|", 1)[0] for f in client.hkeys(f"chaos:{run}:busy")}


def forget_node(client: redis.Redis, run: str, node: str) -> None:
    """A killed node's processes handle nothing any more."""
    fields = [f for f in client.hkeys(f"chaos:{run}:busy") if f.decode().startswith(f"{node}|")]
    if fields:
        client.hdel(f"chaos:{run}:busy", *fields)


def read(client: redis.Redis, run: str) -> dict[str, int]:
    """The probe's figures for `run`, then its keys are deleted."""
    repeats = [int(v) for v in client.hvals(f"chaos:{run}:repeats")]
    figures = {"deliveries": int(client.get(f"chaos:{run}:deliveries") or 0),
               "redelivered_messages": int(client.get(f"chaos:{run}:redelivered") or 0),
               "messages_handled_again": sum(v - 1 for v in repeats if v > 1)}
    client.delete(f"chaos:{run}:deliveries", f"chaos:{run}:redelivered", f"chaos:{run}:repeats",
                  f"chaos:{run}:busy")
    return figures
