"""Where a step's time goes, in the bench's pool processes: each task body's wall and CPU time
(`task_prerun` to `task_postrun`), the pool process's wait between two bodies, and the three parts
of a published step (the run's read, the transition, the next message's publish).

    BENCH_EXTRA_MODULES=bench.step_timing .venv/bin/python bench/run.py --n 600 --rounds 1 \\
        --configs saga_queues --unloaded-n 0
    .venv/bin/python bench/step_timing.py          # medians, then the keys are deleted

Loaded through BENCH_EXTRA_MODULES (by the bench worker, and by the bench driver, whose
`start_saga` publishes count among the publishes); each sample is one RPUSH to the broker's Redis
db (`steptime:*`), so a body timed with its parts carries three more round trips (~0.3 ms) than
one timed alone. The parts are timed by wrapping `CeleryDispatcher.send_step`, `Celery.send_task` (every
publish, so a chain's next link too) and `PostgresStore.load`/`.commit`.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun

PREFIX = "steptime:"
_client: tuple[int, redis.Redis] | None = None
_started: dict[str, tuple[float, float]] = {}
_last_end: dict[int, float] = {}


def _redis() -> redis.Redis:
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(os.environ.get("SAGA_BROKER_URL", "redis://127.0.0.1:6379/13")))
    return _client[1]


def _sample(key: str, wall: float, cpu: float | None = None) -> None:
    _redis().rpush(PREFIX + key, f"{wall}" if cpu is None else f"{wall},{cpu}")


@task_prerun.connect
def _before(task_id: str | None = None, sender: Any = None, **_: Any) -> None:
    now = time.perf_counter()
    if os.getpid() in _last_end and sender is not None:
        _sample(f"gap:{sender.name}", now - _last_end[os.getpid()])
    if task_id is not None:
        _started[task_id] = (now, time.process_time())


@task_postrun.connect
def _after(task_id: str | None = None, sender: Any = None, **_: Any) -> None:
    begun = _started.pop(task_id or "", None)
    if begun is None or sender is None:
        return
    now = time.perf_counter()
    _last_end[os.getpid()] = now
    _sample(f"body:{sender.name}", now - begun[0], time.process_time() - begun[1])


def _timed(owner: type, name: str, key: str) -> None:
    inner: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            _sample(f"part:{key}", time.perf_counter() - w0, time.process_time() - c0)

    setattr(owner, name, timed)


if os.environ.get("BENCH_RUN_ID"):  # in a bench worker, not when run to read the samples
    from workflows.runtime.dispatch import CeleryDispatcher
    from workflows.store.postgres import PostgresStore

    from celery import Celery

    _timed(CeleryDispatcher, "send_step", "publish the next step")
    _timed(Celery, "send_task", "Celery.send_task (any publish: a chain's next link too)")
    _timed(PostgresStore, "load", "read the run")
    _timed(PostgresStore, "commit", "commit the transition")


def main() -> int:
    client = _redis()
    for key in sorted(k.decode() for k in client.scan_iter(PREFIX + "*")):
        values = [v.decode().split(",") for v in client.lrange(key, 0, -1)]
        wall = statistics.median(float(v[0]) for v in values) * 1000
        cpu = f", CPU {statistics.median(float(v[1]) for v in values) * 1000:.2f} ms" if len(values[0]) > 1 else ""
        print(f"{key[len(PREFIX):]:<48} n={len(values):<6} wall {wall:.2f} ms{cpu}")
        client.delete(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
