"""Loaded into the chaos pools only (SAGA_EXTRA_MODULES=bench.chaos_probe): counts the messages
they start handling, in a Redis (CHAOS_PROBE_URL: the broker's, or another beside RabbitMQ) under
chaos:<CHAOS_RUN_ID>:*.

- deliveries: every message a pool process starts;
- redelivered: those Celery marks redelivered (a dead worker's message restored after the
  visibility timeout, or requeued by reject_on_worker_lost);
- repeats: HINCRBY per (task id, retry number): a count above 1 is a message handled again
  (a redelivery, or a duplicate published by a recovery).
"""
from __future__ import annotations

import os
from typing import Any

import redis
from celery.signals import task_prerun

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
    p.execute()


def read(client: redis.Redis, run: str) -> dict[str, int]:
    """The probe's figures for `run`, then its keys are deleted."""
    repeats = [int(v) for v in client.hvals(f"chaos:{run}:repeats")]
    figures = {"deliveries": int(client.get(f"chaos:{run}:deliveries") or 0),
               "redelivered_messages": int(client.get(f"chaos:{run}:redelivered") or 0),
               "messages_handled_again": sum(v - 1 for v in repeats if v > 1)}
    client.delete(f"chaos:{run}:deliveries", f"chaos:{run}:redelivered", f"chaos:{run}:repeats")
    return figures
