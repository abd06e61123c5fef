"""Saga throughput and latency against a bare Celery chain, in one run (`make bench`).

    .venv/bin/python bench/run.py --n 500            # 4 configurations x 3 interleaved rounds
    .venv/bin/python bench/run.py --rss-check        # worker RSS after 500 and after 5000 more sagas

Runs on the real Redis and PostgreSQL given by --broker-url/--database-url (or SAGA_BROKER_URL/
SAGA_DATABASE_URL), by default Redis db 13 and the database `test_bench`. Each run has its own
Redis keys and deletes its own rows at the end, so two runs (or the smoke test in someone's
`make test`) disturb each other's numbers, never their results. --fresh truncates the saga
tables and flushes the Redis db first, for when the bench is alone on them.
Writes bench/results.json; see bench/README.md for what each number means.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench"
DEFAULT_BROKER = "redis://127.0.0.1:6379/13"
ORDER = ["baseline", "baseline_state", "saga", "saga_failure", "dbos", "queues_state", "saga_queues",
         "group_state", "saga_group", "queues_state_pools", "saga_queues_pools", "dbos_queues"]
LABELS = {"baseline": "1 chain, no DB", "baseline_state": "2 chain + 1 UPDATE/task",
          "saga": "3 saga happy path", "saga_failure": "4 saga, fails at step 3",
          "dbos": "5 DBOS, 4 steps", "queues_state": "6 chain+UPDATE, 4 queues",
          "saga_queues": "7 saga, 4 queues", "group_state": "8 group of 4 + 1 UPDATE/task",
          "saga_group": "9 saga, 4-branch group", "queues_state_pools": "10 chain+UPDATE, 4 pools",
          "saga_queues_pools": "11 saga, 4 pools", "dbos_queues": "12 DBOS, queue + workers"}
POOLED = ("queues_state_pools", "saga_queues_pools")
"""The configurations served by a worker per queue (`--pool-concurrency` each), not the bench worker."""
DBOS_CONFIGS = ("dbos", "dbos_queues")
DBOS_SUFFIX = "_dbos"
"""DBOS's own database: the bench database's name with this suffix (`test_bench_dbos`), so two
benches on databases of their own never share DBOS's queue. Made anew by every run (`prepare`)."""
COUNT_FIELDS = ("statements", "checkouts", "begins", "commits", "rollbacks", "messages")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="sagas (or chains) per configuration per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3 for a median worth quoting)")
    p.add_argument("--window", type=int, default=8, help="runs kept in flight (closed loop)")
    p.add_argument("--concurrency", type=int, default=2, help="prefork processes of each bench worker")
    p.add_argument("--workers", type=int, default=1, help="bench workers (each -c --concurrency), for scale-out")
    p.add_argument("--pool-concurrency", type=int, default=1,
                   help="prefork processes of each of the 4 pool workers (configurations 10 and 11)")
    p.add_argument("--warmup", type=int, default=20, help="runs per configuration before measuring")
    p.add_argument("--configs", default=",".join(ORDER), help="subset of " + ",".join(ORDER))
    p.add_argument("--unloaded-n", type=int, default=40,
                   help="runs per configuration per round with one in flight (unloaded latency); 0: none")
    p.add_argument("--unloaded-poll", type=float, default=0.001,
                   help="seconds between the driver's checks for finished runs when one is in flight")
    p.add_argument("--database-url", default=os.environ.get("SAGA_DATABASE_URL", DEFAULT_DB))
    p.add_argument("--broker-url", default=os.environ.get("SAGA_BROKER_URL", DEFAULT_BROKER))
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--fresh", action="store_true",
                   help="truncate the saga tables and flush the Redis db first (a *test*/*bench* database only)")
    p.add_argument("--rss-check", action="store_true", help="only check worker RSS across --rss-n sagas")
    p.add_argument("--rss-n", default="500,5000", help="sagas run before each RSS reading (cumulative)")
    p.add_argument("--rss-config", default="saga", choices=ORDER, help="the configuration the RSS check runs")
    return p.parse_args(argv)


def configure_env(args: argparse.Namespace) -> None:
    """Everything the bench and its workers read, set before `workflows` is imported."""
    import uuid

    os.environ.setdefault("BENCH_RUN_ID", uuid.uuid4().hex[:8])
    os.environ.setdefault("BENCH_QUEUE", "bench")
    os.environ.update({
        "SAGA_DATABASE_URL": args.database_url, "SAGA_BROKER_URL": args.broker_url,
        # BENCH_EXTRA_MODULES: more modules for the workers (to A/B a patch of the hot path).
        "SAGA_EXTRA_MODULES": ",".join(["bench.bench_tasks", *filter(None, [os.environ.get("BENCH_EXTRA_MODULES")])]),
        "SAGA_LOG_LEVEL": "WARNING",
        # The sweeper must never interfere (and no beat runs): a step is "lost" only after a day.
        "SAGA_DISPATCH_GRACE": "86400",
    })
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.keys import use_bench_field_keys

    use_bench_field_keys()


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ------------------------------------------------------------------ setup


def pg_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("postgresql"):
        raise SystemExit(f"the bench needs PostgreSQL, not {u.drivername}")
    # ?prepare_threshold= (PgBouncer) is an option of psycopg 3's, not a libpq parameter
    return u.set(drivername="postgresql").difference_update_query(["prepare_threshold"]).render_as_string(
        hide_password=False)


def check_wipe_allowed(database_url: str, broker_url: str) -> None:
    """--fresh wipes the database and Redis db: refuse ones that look like somebody's data."""
    from sqlalchemy.engine import make_url

    name = make_url(database_url).database or ""
    redis_db = broker_url.rstrip("/").rsplit("/", 1)[-1]
    if "test" not in name and "bench" not in name or not redis_db.isdigit() or redis_db == "0":
        raise SystemExit(f"--fresh refuses to wipe database {name!r} and Redis db {redis_db!r}: "
                         "use a database named *bench* or *test* and a Redis db other than 0")


@contextlib.contextmanager
def admin_connection(database_url: str):  # type: ignore[no-untyped-def]
    """A cursor on the server's `postgres` database, in autocommit (to create databases)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    admin = psycopg2.connect(pg_dsn(str(make_url(database_url).set(database="postgres").render_as_string(False))))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            yield cur
    finally:
        admin.close()


def prepare(database_url: str, broker_url: str, fresh: bool = False):  # type: ignore[no-untyped-def]
    """Create and migrate the database (and with `fresh`, wipe it and the Redis db); returns clients."""
    import psycopg2
    import redis
    from sqlalchemy.engine import make_url

    from bench.bench_tasks import CREATE_STATE_TABLE, STATE_TABLE
    from workflows.store.db import get_engine, migrate

    with admin_connection(database_url) as cur:
        # DBOS's own database is made anew: what an earlier run left in it (workflows still queued by a
        # killed run, an application version of other code registered as the newest) keeps DBOS's queue
        # workers from dequeuing this run's workflows, and the queue configuration waits forever
        cur.execute(f'DROP DATABASE IF EXISTS "{dbos_database(database_url)}" WITH (FORCE)')
        for name in (make_url(database_url).database, dbos_database(database_url)):  # the sagas', and DBOS's own
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    migrate(database_url)
    with get_engine(database_url).begin() as conn:
        conn.execute(CREATE_STATE_TABLE)
        if fresh:
            conn.exec_driver_sql(f"TRUNCATE sagas, saga_steps, saga_events, dead_letters, {STATE_TABLE}")
    r = redis.Redis.from_url(broker_url)
    if fresh:
        r.flushdb()
    pg = psycopg2.connect(pg_dsn(database_url))
    pg.autocommit = True
    return r, pg


def vacuum(dsn: str) -> None:
    """`VACUUM ANALYZE` the database before a phase (not timed). A server with autovacuum off (as
    this machine's test server is) otherwise keeps every deleted bench row as a dead tuple and
    plans on no statistics: phases got slower run by run (seq scans over dead rows), the sagas'
    tables more than the chain's."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
    finally:
        conn.close()


def make_configs(app, r, pg) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from celery import chain, group

    from bench.bench_tasks import (DONE_KEY, INSERT_STATE, POOL_QUEUES, QUEUE, SERVICE_QUEUES, STATE_TABLE,
                                   statement_engine)
    from bench.harness import Config
    from workflows import start_saga

    def chain_start(task: str, stateful: bool, together: bool = False,  # type: ignore[no-untyped-def]
                    queues: tuple[str, ...] = (QUEUE,) * 4):
        def start(tag: str, i: int) -> str:
            cid = f"{tag}{i}"
            if stateful:  # the chain's row, as start_saga inserts the saga's
                with statement_engine().connect() as c:
                    c.execute(INSERT_STATE, {"id": cid})
                    c.commit()
            # the chain without a database reports its end in a Redis hash; the chain with state,
            # like the sagas, is seen finished by polling its row in PostgreSQL (a group's: all 4 ran)
            links = [app.signature(task, args=(cid,), kwargs={"done": DONE_KEY} if k == 3 and not stateful else {},
                                   immutable=True, queue=queues[k]) for k in range(4)]
            (group(*links) if together else chain(*links)).apply_async()
            return cid
        return start

    def chain_finished(keys: list[str]) -> dict[str, bool]:
        return {k: True for k, v in zip(keys, r.hmget(DONE_KEY, keys)) if v is not None}

    def chain_state_finished(keys: list[str]) -> dict[str, bool]:
        with pg.cursor() as cur:
            cur.execute(f"SELECT id FROM {STATE_TABLE} WHERE id = ANY(%s) AND n = 4", (keys,))
            return {k: True for (k,) in cur.fetchall()}

    def saga_finished(expected: str):  # type: ignore[no-untyped-def]
        def finished(keys: list[str]) -> dict[str, bool]:
            with pg.cursor() as cur:
                cur.execute("SELECT id, state FROM sagas WHERE id = ANY(%s) "
                            "AND state IN ('COMPLETED', 'COMPENSATED', 'FAILED')", (keys,))
                return {k: state == expected for k, state in cur.fetchall()}
        return finished

    return {
        "baseline": Config("baseline", LABELS["baseline"], chain_start("bench.noop", False), chain_finished,
                           cleanup=lambda: r.delete(DONE_KEY)),
        "baseline_state": Config("baseline_state", LABELS["baseline_state"], chain_start("bench.stateful", True),
                                 chain_state_finished),
        "saga": Config("saga", LABELS["saga"], lambda tag, i: start_saga("bench.noop4", {"i": i}),
                       saga_finished("COMPLETED")),
        "saga_failure": Config("saga_failure", LABELS["saga_failure"],
                               lambda tag, i: start_saga("bench.fail3", {"i": i}), saga_finished("COMPENSATED")),
        "queues_state": Config("queues_state", LABELS["queues_state"],
                               chain_start("bench.stateful", True, queues=SERVICE_QUEUES), chain_state_finished),
        "saga_queues": Config("saga_queues", LABELS["saga_queues"],
                              lambda tag, i: start_saga("bench.queues4", {"i": i}), saga_finished("COMPLETED")),
        "group_state": Config("group_state", LABELS["group_state"], chain_start("bench.stateful", True, together=True),
                              chain_state_finished),
        "saga_group": Config("saga_group", LABELS["saga_group"], lambda tag, i: start_saga("bench.group4", {"i": i}),
                             saga_finished("COMPLETED")),
        "queues_state_pools": Config("queues_state_pools", LABELS["queues_state_pools"],
                                     chain_start("bench.stateful", True, queues=POOL_QUEUES), chain_state_finished),
        "saga_queues_pools": Config("saga_queues_pools", LABELS["saga_queues_pools"],
                                    lambda tag, i: start_saga("bench.pools4", {"i": i}), saga_finished("COMPLETED")),
    }


# ------------------------------------------------------------------ measuring


def settled_totals(r) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The shared counters once the workers' last flushes landed (two equal reads)."""
    from bench import counters

    counters.flush(r)
    prev = counters.totals(r)
    for _ in range(40):
        time.sleep(0.05)
        cur = counters.totals(r)
        if cur == prev:
            return cur
        prev = cur
    return prev


def measure(cfg, n: int, *, window: int, tag: str, r, sampler, cpu, poll: float = 0.005):  # type: ignore[no-untyped-def]
    from bench.harness import drive

    before = settled_totals(r)
    sampler.reset()
    cpu0 = cpu.snapshot()
    phase = drive(cfg, n, window=window, tag=tag, poll=poll)
    after = settled_totals(r)
    spent = cpu.delta(cpu0, cpu.snapshot())
    phase.worker_cpu, phase.db_cpu, phase.redis_cpu, phase.busy = spent.workers, spent.db, spent.redis, spent.busy
    phase.counts = {k: after[k] - before[k] for k in COUNT_FIELDS}
    phase.peak_rss = sampler.peak
    return phase


def dbos_database(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return f"{make_url(database_url).database}{DBOS_SUFFIX}"


def dbos_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("dbos") is not None


def measure_dbos(database_url: str, n: int, window: int, queue_workers: int = 0):  # type: ignore[no-untyped-def]
    """One phase of DBOS Transact (bench/dbos_peer.py in a process of its own, its own database on
    the same server): its startup and warm-up are not timed; its CPU is the whole process's (and,
    with `queue_workers`, that of the worker processes that run the workflows off a DBOS queue)."""
    import subprocess

    from sqlalchemy.engine import make_url

    from bench.harness import Phase

    url = pg_dsn(str(make_url(database_url).set(database=dbos_database(database_url)).render_as_string(False)))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "dbos_peer.py"), "--n", str(n), "--window",
                          str(window), "--warmup", "10", "--database-url", url,
                          "--queue-workers", str(queue_workers)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"bench/dbos_peer.py failed: {out.stderr[-2000:]}")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    phase = Phase("dbos_queues" if queue_workers else "dbos", doc["n"], doc["elapsed"], doc["latencies"], 0)
    phase.worker_cpu = doc["cpu"]
    return phase


def summarize(phases: list, unloaded: list | None = None) -> dict[str, Any]:  # type: ignore[type-arg]
    from bench.harness import percentile

    tp = [p.throughput for p in phases]
    lat = [x for p in phases for x in p.latencies]
    runs = sum(p.n for p in phases)
    per = {k: sum(p.counts.get(k, 0) for p in phases) / runs for k in COUNT_FIELDS}
    trips = per["statements"] + per["begins"] + per["commits"] + per["rollbacks"]  # checkouts: no ping
    return {
        "label": LABELS[phases[0].config],
        "throughput": {"median": statistics.median(tp), "min": min(tp), "max": max(tp), "rounds": tp},
        "latency_ms": {"p50": 1000 * percentile(lat, 50), "p99": 1000 * percentile(lat, 99),
                       "max": 1000 * max(lat)},
        "statements_per_saga": per["statements"], "db_round_trips_per_saga": trips,
        "commits_per_saga": per["commits"], "rollbacks_per_saga": per["rollbacks"],
        "pool_checkouts_per_saga": per["checkouts"], "messages_per_saga": per["messages"],
        "worker_cpu_ms_per_saga": 1000 * sum(p.worker_cpu for p in phases) / runs,
        "db_cpu_ms_per_saga": 1000 * sum(p.db_cpu for p in phases) / runs,
        "redis_cpu_ms_per_saga": 1000 * sum(p.redis_cpu for p in phases) / runs,
        "machine_busy": statistics.median(busy) if (busy := [p.busy for p in phases if p.busy]) else None,
        "peak_rss_mb": max(p.peak_rss for p in phases) / 2**20,
        "errors": sum(p.errors for p in phases) + sum(p.errors for p in unloaded or []),
        "unloaded_latency_ms": ({"p50": 1000 * percentile(u, 50), "p99": 1000 * percentile(u, 99), "n": len(u)}
                                if (u := [x for p in unloaded or [] for x in p.latencies]) else None),
    }


def ratio(results: dict[str, Any], num: str, den: str) -> float | None:
    """Median over rounds of the paired throughput ratio (same round, same noise)."""
    if num not in results or den not in results:
        return None
    pairs = zip(results[num]["throughput"]["rounds"], results[den]["throughput"]["rounds"])
    return statistics.median(a / b for a, b in pairs if b)


def unloaded_ratio(results: dict[str, Any], num: str, den: str) -> float | None:
    a, b = (results.get(k, {}).get("unloaded_latency_ms") for k in (num, den))
    return a["p50"] / b["p50"] if a and b and b["p50"] else None


def print_table(results: dict[str, Any], out: Any = sys.stdout) -> None:
    head = (f"{'configuration':<26}{'sagas/s median (min-max)':>26}{'p50 ms':>9}{'p99 ms':>9}{'1-p50':>7}"
            f"{'stmts':>7}{'DB trips':>9}{'msgs':>6}{'wCPU ms':>8}{'dbCPU ms':>9}{'rCPU ms':>8}{'busy':>6}"
            f"{'RSS MB':>8}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for name in ORDER:
        c = results.get(name)
        if c is None:
            continue
        t = c["throughput"]
        span = f"{t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f})"
        u = c.get("unloaded_latency_ms")
        print(f"{c['label']:<26}{span:>26}{c['latency_ms']['p50']:>9.1f}{c['latency_ms']['p99']:>9.1f}"
              f"{u['p50'] if u else float('nan'):>7.1f}"
              f"{c['statements_per_saga']:>7.1f}{c['db_round_trips_per_saga']:>9.1f}"
              f"{c['messages_per_saga']:>6.1f}{c['worker_cpu_ms_per_saga']:>8.1f}{c['db_cpu_ms_per_saga']:>9.1f}"
              f"{c['redis_cpu_ms_per_saga']:>8.1f}"
              f"{'' if c['machine_busy'] is None else format(c['machine_busy'], '.0%'):>6}"
              f"{c['peak_rss_mb']:>8.1f}", file=out)


# ------------------------------------------------------------------ main


class Session:
    """The bench's world for one run: prepared servers, the worker, the sampler. A context manager."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def __enter__(self) -> Session:
        from bench.harness import BenchWorker, CpuMeter, RssSampler

        self.r, self.pg = prepare(self.args.database_url, self.args.broker_url, self.args.fresh)
        self.saga_ids: list[str] = []
        import worker  # the same app, settings and runtime as the workers

        self.app = worker.app
        self.configs = make_configs(self.app, self.r, self.pg)
        from bench.bench_tasks import SERVICE_QUEUES

        queues = ",".join(["saga", os.environ["BENCH_QUEUE"], *SERVICE_QUEUES])
        self.workers = [BenchWorker(worker_env(), concurrency=self.args.concurrency, queues=queues)
                        for _ in range(self.args.workers)]
        if set(POOLED) & set(self.args.configs.split(",")):  # a worker per service queue, as the seeds deploy
            from bench.bench_tasks import POOL_QUEUES

            self.workers += [BenchWorker(worker_env(), concurrency=self.args.pool_concurrency, queues=q)
                             for q in POOL_QUEUES]
        try:
            for w in self.workers:
                w.wait_ready(self.app)
        except BaseException:
            for w in self.workers:
                w.stop()
            raise
        self.worker = self.workers[0]
        self.sampler = RssSampler(self.worker.proc.pid)  # RSS: the first worker's tree
        self.sampler.start()
        self.cpu = CpuMeter([w.proc.pid for w in self.workers], self.pg, self.r)
        return self

    def measure(self, name: str, n: int, tag: str, window: int | None = None):  # type: ignore[no-untyped-def]
        from sqlalchemy.engine import make_url

        window = window or self.args.window
        if name in DBOS_CONFIGS:
            vacuum(pg_dsn(str(make_url(self.args.database_url).set(database=dbos_database(self.args.database_url))
                              .render_as_string(False))))
            return measure_dbos(self.args.database_url, n, window,
                                queue_workers=self.args.concurrency if name == "dbos_queues" else 0)
        vacuum(pg_dsn(self.args.database_url))
        # one run in flight: its latency is 10-20 ms, which a 5 ms poll would round up to whole polls
        # (DBOS in-process is not polled: its handle's result is awaited in memory)
        poll = self.args.unloaded_poll if window == 1 else 0.005
        phase = measure(self.configs[name], n, window=window, tag=f"{os.environ['BENCH_RUN_ID']}-{tag}",
                        r=self.r, sampler=self.sampler, cpu=self.cpu, poll=poll)
        if name.startswith("saga"):
            self.saga_ids.extend(phase.keys)
        return phase

    def __exit__(self, *exc: object) -> None:
        self.sampler.stop()
        for w in self.workers:
            w.stop()
        self.cleanup()
        self.pg.close()

    def cleanup(self) -> None:
        """Delete this run's rows and Redis keys."""
        from bench import counters
        from bench.bench_tasks import DONE_KEY, STATE_TABLE

        with self.pg.cursor() as cur:
            for i in range(0, len(self.saga_ids), 5000):
                chunk = self.saga_ids[i:i + 5000]
                cur.execute("DELETE FROM saga_events WHERE saga_id = ANY(%s)", (chunk,))
                cur.execute("DELETE FROM sagas WHERE id = ANY(%s)", (chunk,))  # steps: ON DELETE CASCADE
            cur.execute(f"DELETE FROM {STATE_TABLE} WHERE id LIKE %s", (os.environ["BENCH_RUN_ID"] + "-%",))
        self.r.delete(DONE_KEY, counters.KEY)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    names = [c for c in ORDER if c in args.configs.split(",")]
    if not dbos_available():
        for name in set(DBOS_CONFIGS) & set(names):
            print(f"  ({name}: dbos not installed, skipped: pip install -e '.[bench]')", flush=True)
            names.remove(name)
    started = time.monotonic()
    phases: dict[str, list] = {c: [] for c in names}  # type: ignore[type-arg]
    unloaded: dict[str, list] = {c: [] for c in names}  # type: ignore[type-arg]
    with Session(args) as s:
        for name in names:
            if args.warmup:
                s.measure(name, args.warmup, tag=f"w-{name}-")
        for rnd in range(args.rounds):
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:  # rotate the order
                p = s.measure(name, args.n, tag=f"r{rnd}-{name}-")
                phases[name].append(p)
                if args.unloaded_n:
                    u = s.measure(name, args.unloaded_n, tag=f"u{rnd}-{name}-", window=1)
                    unloaded[name].append(u)
                print(f"  round {rnd + 1}/{args.rounds} {name:<15} {p.throughput:7.1f}/s "
                      f"({p.n} in {p.elapsed:.1f}s, {p.errors} errors)", flush=True)
    results = {name: summarize(ps, unloaded[name]) for name, ps in phases.items()}
    doc: dict[str, Any] = {
        "saga_vs_baseline_with_state": ratio(results, "saga", "baseline_state"),
        "saga_vs_baseline": ratio(results, "saga", "baseline"),
        "saga_failure_vs_baseline_with_state": ratio(results, "saga_failure", "baseline_state"),
        "saga_group_vs_group_with_state": ratio(results, "saga_group", "group_state"),
        "saga_vs_dbos": ratio(results, "saga", "dbos"),
        "saga_queues_vs_chain_queues_with_state": ratio(results, "saga_queues", "queues_state"),
        "saga_pools_vs_chain_pools_with_state": ratio(results, "saga_queues_pools", "queues_state_pools"),
        "saga_queues_vs_dbos_queues": ratio(results, "saga_queues", "dbos_queues"),
        "saga_pools_vs_dbos_queues": ratio(results, "saga_queues_pools", "dbos_queues"),
        "saga_unloaded_p50_vs_baseline_with_state": unloaded_ratio(results, "saga", "baseline_state"),
        "saga_unloaded_p50_vs_dbos": unloaded_ratio(results, "saga", "dbos"),
        "saga_p99_vs_baseline_with_state_p99": (
            results["saga"]["latency_ms"]["p99"] / results["baseline_state"]["latency_ms"]["p99"]
            if "saga" in results and "baseline_state" in results else None),
        "configs": results,
        "settings": {"n": args.n, "rounds": args.rounds, "window": args.window, "warmup": args.warmup,
                     "concurrency": args.concurrency, "workers": args.workers, "pool": "prefork",
                     "pool_concurrency": args.pool_concurrency,
                     "acks_late": True, "prefetch": 1,
                     "serializer": "json", "database_url": args.database_url, "broker_url": args.broker_url,
                     "cpus": os.cpu_count()},
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    doc["targets"] = targets(doc)
    return doc


TARGETS = [  # (key, comparison, bound): #6's floor, #21's targets, then #32's
    ("saga_vs_baseline_with_state", ">=", 2.0),
    ("saga_vs_dbos", ">=", 1.7),
    ("saga_queues_vs_chain_queues_with_state", ">=", 1.0),
    ("saga_pools_vs_chain_pools_with_state", ">=", 0.9),
    ("saga_unloaded_p50_vs_baseline_with_state", "<=", 1.2),
    ("saga_unloaded_p50_vs_dbos", "<=", 0.6),
    ("saga_p99_vs_baseline_with_state_p99", "<=", 1.5),
]


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, op, bound in TARGETS:
        value = doc.get(key)
        if value is not None:
            out[key] = {"target": f"{op} {bound}", "value": round(value, 3),
                        "met": value >= bound if op == ">=" else value <= bound}
    return out


def write(path: Path, doc: dict[str, Any]) -> None:
    """Write `doc` to `path`, keeping other top-level keys already there (e.g. `rss_check`)."""
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    if "configs" in doc:  # a new bench run replaces the old one's numbers, not the RSS check
        old = {k: v for k, v in old.items() if k == "rss_check"}
    path.write_text(json.dumps({**old, **doc}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fresh:
        check_wipe_allowed(args.database_url, args.broker_url)
    configure_env(args)
    if args.rss_check:
        from bench.rss import rss_check

        doc = {"rss_check": rss_check(args)}
        write(args.output, doc)
        return 0 if doc["rss_check"]["flat"] else 1  # the main process too (workflows/timer_heap.py)
    print(f"bench: n={args.n} x {args.rounds} rounds, window {args.window}, prefork x{args.concurrency}, "
          f"{args.database_url} + {args.broker_url}", flush=True)
    doc = run_bench(args)
    write(args.output, doc)
    print()
    print_table(doc["configs"])
    print()
    for key in ("saga_vs_baseline_with_state", "saga_vs_baseline", "saga_failure_vs_baseline_with_state",
                "saga_p99_vs_baseline_with_state_p99", "saga_group_vs_group_with_state", "saga_vs_dbos",
                "saga_queues_vs_chain_queues_with_state", "saga_pools_vs_chain_pools_with_state",
                "saga_queues_vs_dbos_queues", "saga_pools_vs_dbos_queues", "saga_unloaded_p50_vs_baseline_with_state",
                "saga_unloaded_p50_vs_dbos"):
        if doc[key] is not None:
            print(f"{key:<40} {doc[key]:.3f}")
    for name, t in doc["targets"].items():
        print(f"target {name}: {t['value']} (want {t['target']}) {'met' if t['met'] else 'MISSED'}")
    print(f"\n{doc['elapsed_s']}s; wrote {args.output}")
    return 0


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
        sys.path[0] = str(ROOT)  # import bench.* as a package, not its files as top-level modules
    sys.exit(main())
