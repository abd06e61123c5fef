"""Does the raw-driver path pay? `PostgresStore`'s hot statements timed three ways, side by side:

- `driver`: as shipped, the statements compiled once and run on psycopg's cursor (`store._driver`);
- `sqlalchemy`: the same one-statement creation, read and transition through SQLAlchemy's
  `Connection.execute` on the same autocommit engine (what the store does without the driver);
- `transaction`: `SqlStore`'s transactions (the SQLite implementation's path, on PostgreSQL).

Each sample is one whole process (a fresh interpreter, its own pool) that creates `--n` runs of a
three-step saga and walks each through its three steps: per run one `create_run`, then three
`load` + `commit` pairs, each transition decided by the pure engine. The processes of the three
ways are interleaved, `--rounds` times, and the medians printed: microseconds of wall time per call
and of the process's CPU per step (load + commit).

    .venv/bin/python bench/driver_timing.py --url postgresql+psycopg://postgres@127.0.0.1:5432/<db> \\
        --n 400 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("driver", "sqlalchemy", "transaction")


def _store(mode: str, url: str) -> Any:
    from workflows.core.errors import ConcurrentTransition
    from workflows.store.db import statement_engine
    from workflows.store.postgres import PostgresStore, creation_statement, transition_statement
    from workflows.store.rows import creation_rows
    from workflows.store.sql import KEPT, STATE, SqlStore, run_state

    class ThroughSqlAlchemy(PostgresStore):
        """`PostgresStore`'s statements through `Connection.execute` instead of the driver's cursor."""

        def create_run(self, t: Any, *, idempotency_key: str | None, now: datetime) -> Any:
            from workflows.store.base import Created
            rows = creation_rows(t, idempotency_key=idempotency_key, by=t.after.caused_by or "", now=now)
            with statement_engine(self.url).connect() as c:
                c.execute(*creation_statement(*rows))
            return Created(t.after.saga_id, True)

        def load(self, saga_id: str) -> Any:
            with statement_engine(self.url).connect() as c:
                rows = c.execute(STATE, {"saga_id": saga_id}).all()
                kept = c.execute(KEPT, {"saga_id": saga_id}).all() if rows and rows[0].signals_pending else []
            return run_state(saga_id, rows, kept)

        def commit(self, t: Any, *, by: str, now: datetime) -> None:
            with statement_engine(self.url).connect() as c:
                if c.execute(*transition_statement(t, by, now)).scalar() != 1:
                    raise ConcurrentTransition(f"saga {t.after.saga_id} changed under us")

    return {"driver": PostgresStore, "sqlalchemy": ThroughSqlAlchemy, "transaction": SqlStore}[mode](url)


def one_process(mode: str, url: str, n: int) -> dict[str, float]:
    """One sample: `n` runs created and walked to COMPLETED with `mode`'s store."""
    from workflows import Saga, Step
    from workflows.core.engine import decide, new_run
    from workflows.core.state import STARTED_BY, ActionSucceeded, Started, Timing

    saga = Saga(f"driver_timing_{mode}", steps=[Step("a", action="x.a", compensation="x.undo_a"),
                                                Step("b", action="x.b", compensation="x.undo_b"),
                                                Step("c", action="x.c", compensation=None)])
    store = _store(mode, url)
    ids = lambda: uuid.uuid4().hex  # noqa: E731
    timing = Timing()
    # warm up: the pool's connections, the compiled caches, psycopg's prepared statements
    for _ in range(20):
        _walk(store, saga, decide, new_run, Started, ActionSucceeded, STARTED_BY, ids, timing, {})
    spent: dict[str, list[float]] = {"create": [], "load": [], "commit": []}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        _walk(store, saga, decide, new_run, Started, ActionSucceeded, STARTED_BY, ids, timing, spent)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    steps = 3 * n
    return {"create_us": 1e6 * statistics.median(spent["create"]), "load_us": 1e6 * statistics.median(spent["load"]),
            "commit_us": 1e6 * statistics.median(spent["commit"]), "cpu_per_step_us": 1e6 * cpu / steps,
            "wall_per_step_us": 1e6 * wall / steps}


def _walk(store: Any, saga: Any, decide: Any, new_run: Any, started: Any, succeeded: Any, by: str, ids: Any,
          timing: Any, spent: dict[str, list[float]]) -> None:
    now = datetime.now(timezone.utc)
    t = decide(saga, new_run(saga, ids(), {"n": 1}, by), started(), now, ids, timing)
    a = time.perf_counter()
    store.create_run(t, idempotency_key=None, now=now)
    spent.setdefault("create", []).append(time.perf_counter() - a)
    for step in ("a", "b", "c"):
        a = time.perf_counter()
        run = store.load(t.after.saga_id)
        b = time.perf_counter()
        t = decide(saga, run, succeeded(step, {"ok": step}), now, ids, timing)
        c = time.perf_counter()
        store.commit(t, by="bench", now=now)
        d = time.perf_counter()
        spent.setdefault("load", []).append(b - a)
        spent.setdefault("commit", []).append(d - c)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="a PostgreSQL database (migrated here; its runs are left in it)")
    p.add_argument("--n", type=int, default=400, help="runs per process")
    p.add_argument("--rounds", type=int, default=5, help="processes per way, interleaved")
    p.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_process(args.one, args.url, args.n)))
        return 0
    from workflows.store.db import migrate

    migrate(args.url)
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
            out = subprocess.run([sys.executable, __file__, "--url", args.url, "--n", str(args.n), "--one", mode],
                                 check=True, capture_output=True, text=True, cwd=ROOT).stdout
            samples[mode].append(json.loads(out.strip().splitlines()[-1]))
    keys = ("create_us", "load_us", "commit_us", "cpu_per_step_us", "wall_per_step_us")
    print(f"{args.rounds} processes per way, {args.n} runs each (medians of the per-process medians)")
    print(f"{'way':<12}" + "".join(f"{k:>18}" for k in keys))
    for mode in MODES:
        print(f"{mode:<12}" + "".join(f"{statistics.median(s[k] for s in samples[mode]):>18.0f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
