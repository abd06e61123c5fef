"""Redis with Sentinel as the broker: the master killed under load, nothing lost, nothing doubled.

The test starts its own Redis master, a replica and three sentinels (quorum 2) on free ports, and a
prefork worker whose broker is `sentinel://...;sentinel://...;sentinel://...` with
SAGA_BROKER_MASTER_NAME. It starts HA_N order sagas (150 here; `HA_N=500` for the figures in the
issue) through a client app on the same URL, SIGKILLs the master while they are in flight, and
waits for the sentinels to promote the replica. Replication is asynchronous: a message published
or acknowledged just before the kill may be gone from the new master (a lost message: the sweeper
times its step out and the step runs again), or come back (a duplicate: the guard drops it). Every
saga must end terminal and every invariant of the chaos run must hold (`tests/support/ha.py`).
"""
from __future__ import annotations

import json
import os
import time

import pytest
from celery import Celery
from tests.support.workers import WorkerProcess, worker_env

from tests.support.servers import MASTER_NAME, sentinel_group

N = int(os.environ.get("HA_N", "150"))
QUEUES = "saga,inventory,payment,shipping,notification"


def sentinel_app(url: str) -> Celery:
    app = Celery("tests-sentinel")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = url
    app.conf.broker_transport_options = {"master_name": MASTER_NAME, "visibility_timeout": 15}
    return app


def test_a_sentinel_url_without_a_master_name_is_refused_at_install() -> None:
    from workflows.runtime.brokers import check_sentinel

    with pytest.raises(ValueError, match="SAGA_BROKER_MASTER_NAME"):
        check_sentinel("sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380", {"visibility_timeout": 60})
    check_sentinel("sentinel://127.0.0.1:26379", {"master_name": "m"})  # named: accepted
    check_sentinel("redis://127.0.0.1:6379/0", {})  # not a sentinel URL: nothing to name


def test_sagas_survive_the_master_killed_under_load(app, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.ha import Load

    with sentinel_group() as group:
        env = worker_env(SAGA_BROKER_URL=group.broker_url, SAGA_BROKER_MASTER_NAME=MASTER_NAME,
                         SAGA_REDIS_VISIBILITY_TIMEOUT="15", SAGA_REDIS_VISIBILITY_CHECK="0")
        client = sentinel_app(group.broker_url)
        worker = WorkerProcess(f"sentinel-{os.getpid()}", QUEUES, concurrency=4, env=env,
                               log=tmp_path / "worker.log")
        try:
            worker.wait_ready(client, timeout=60)
            # Given N order sagas in flight on the sentinel-managed broker
            load = Load(client, N)
            started_s = load.start()
            in_flight = load.not_terminal()
            # When the master is killed outright
            group.kill_master()
            failover_s = group.wait_failover()
            # Then every saga ends terminal, through the promoted replica
            t0 = time.monotonic()
            left = load.wait_terminal(bound=150)
            settled_s = time.monotonic() - t0
        finally:
            worker.stop()
        figures, violations = load.check()
    figures.update(sagas_started=N, start_s=round(started_s, 1), in_flight_at_kill=in_flight,
                   failover_s=round(failover_s, 1), settled_after_failover_s=round(settled_s, 1))
    print(json.dumps(figures, indent=2, sort_keys=True, default=str))
    assert left == 0, f"{left} saga(s) not terminal; worker log: {(tmp_path / 'worker.log').read_text()[-3000:]}"
    assert violations == [], "\n".join(violations[:30])
    assert in_flight > 0  # the kill hit work in flight
    assert sum(figures["states"].get(s, 0) for s in ("COMPLETED", "COMPENSATED", "FAILED")) == N
