"""What breaks first at scale, in the store: query times with a million history rows (`make bench-store`).

    .venv/bin/python bench/store_scale.py                    # 100,000 ended runs, 1,000,000 history rows
    .venv/bin/python bench/store_scale.py --runs 20000       # smaller

On a database of its own (`test_bench_store`, dropped and re-created each run), seeds with SQL
(`generate_series`): `--runs` ended runs of 4 steps with 10 history rows each, plus 1,000 runs in
flight (a step RUNNING, its deadline ahead). Then times, through the store's own methods, the
median of `--repeat` calls of: a run's status (`get`, with its history), the first page of the
list (with its total count), the list filtered by state, the sweeper's due-steps query, and the
retention job (`prune`, 1,000 runs per transaction) deleting `--prune` runs. Prints a table and
writes bench/store_scale.json.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATABASE = "test_bench_store"

SEED = """
INSERT INTO sagas (id, saga_type, style, state, version, input, input_hash, idempotency_key, caused_by,
                   failure_reason, deadline_at, created_at, updated_at)
SELECT 'run-' || g, 'order_fulfillment', 'orchestrated', CASE WHEN g %% 10 = 0 THEN 'COMPENSATED' ELSE 'COMPLETED' END,
       9, jsonb_build_object('order_id', 'ord-' || g), md5(g::text), NULL, 'seed', NULL, NULL,
       %(t0)s::timestamptz + g * interval '1 second', %(t0)s::timestamptz + g * interval '1 second'
FROM generate_series(1, %(runs)s) g;
INSERT INTO saga_steps (saga_id, index, name, status, attempts, compensation_attempts, result, task_id)
SELECT 'run-' || g, i, 'step' || i, 'SUCCEEDED', 1, 0, '{}'::jsonb, 'run-' || g || '.step' || i
FROM generate_series(1, %(runs)s) g, generate_series(0, 3) i;
INSERT INTO saga_events (saga_id, at, type, step, attempt, detail)
SELECT 'run-' || g, %(t0)s::timestamptz + g * interval '1 second', 'StepSucceeded', 'step' || (e %% 4), 1,
       jsonb_build_object('by', 'seed')
FROM generate_series(1, %(runs)s) g, generate_series(1, 10) e;
INSERT INTO sagas (id, saga_type, style, state, version, input, input_hash, caused_by, created_at, updated_at)
SELECT 'live-' || g, 'order_fulfillment', 'orchestrated', 'RUNNING', 3, '{}'::jsonb, md5(g::text), 'seed',
       now(), now() FROM generate_series(1, 1000) g;
INSERT INTO saga_steps (saga_id, index, name, status, attempts, compensation_attempts, task_id, deadline_at)
SELECT 'live-' || g, 0, 'step0', 'RUNNING', 0, 0, 'live-' || g || '.step0', now() + interval '1 hour'
FROM generate_series(1, 1000) g;
ANALYZE;
"""


def timed(fn: Any, repeat: int) -> float:
    """Median milliseconds of `repeat` calls of `fn`."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--prune", type=int, default=10_000, help="runs the retention job deletes")
    p.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "store_scale.json")
    args = p.parse_args(argv)

    import psycopg
    from sqlalchemy.engine import make_url

    from workflows.store import open_store
    from workflows.store.db import migrate

    server = make_url(args.server)
    admin = psycopg.connect(server.set(drivername="postgresql").render_as_string(False), autocommit=True)
    admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{DATABASE}"')
    admin.close()
    url = server.set(database=DATABASE).render_as_string(False)
    migrate(url)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    started = time.perf_counter()
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False), autocommit=True) as c:
        for statement in filter(str.strip, SEED.split(";")):
            c.execute(statement, {"runs": args.runs, "t0": t0} if "%(" in statement else None)  # type: ignore[arg-type]
        events = c.execute("SELECT count(*) FROM saga_events").fetchone()[0]  # type: ignore[index]
        size = c.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]  # type: ignore[index]
    seeded = time.perf_counter() - started
    store = open_store(url)
    ids = [f"run-{random.randint(1, args.runs)}" for _ in range(args.repeat)]
    it = iter(ids * 2)
    now = datetime.now(timezone.utc)
    doc: dict[str, Any] = {
        "runs": args.runs, "history_rows": events, "in_flight": 1000, "database_size": size,
        "seed_s": round(seeded, 1),
        "status_ms": timed(lambda: store.get(next(it)), args.repeat),
        "list_first_page_ms": timed(lambda: store.list(limit=50), args.repeat),
        "list_state_running_ms": timed(lambda: store.list(state="RUNNING", limit=50), args.repeat),
        "list_state_compensated_page_100_ms": timed(lambda: store.list(state="COMPENSATED", limit=50, offset=5000),
                                                    args.repeat),
        "sweeper_due_steps_ms": timed(lambda: store.due_steps(now), args.repeat),
    }
    cutoff = t0 + timedelta(seconds=args.prune + 1)  # the first `prune` runs ended before it
    batches = []
    deleted = 0
    while deleted < args.prune:
        b0 = time.perf_counter()
        n = store.prune(cutoff, limit=1000)
        batches.append(1000 * (time.perf_counter() - b0))
        if n == 0:
            break
        deleted += n
    doc.update({"pruned": deleted, "prune_batch_ms_median": statistics.median(batches),
                "prune_total_s": round(sum(batches) / 1000, 2)})
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    for k, v in doc.items():
        print(f"{k:<38} {v:.1f}" if isinstance(v, float) else f"{k:<38} {v}")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
