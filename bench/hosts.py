"""Throughput per host count: 1, 2 and 3 worker hosts, a pool per queue on each (`make bench-scale`).

    sudo .venv/bin/python bench/hosts.py --hosts 1,2,3 --n 120    # root: namespaces and veth pairs

Each host is a `bench.partition.Host`: a network namespace joined to this machine by a veth pair,
socat forwarding its PostgreSQL and Redis ports, and one worker process per queue (the
orchestrator's `saga` and each service's, `-c 1` each, as the seeds deploy them), all sharing the
one PostgreSQL and the one Redis. Hosts are added one at a time and kept: at each count, after a
warm-up, the driver (this process) starts `--n` order sagas at once and waits until every one is
terminal, `--rounds` times. Per count it reports the median throughput (sagas from the first start
to the last terminal, per second), and the CPU each run (saga) cost on each host: its workers, its
link (the socat forwarders), and PostgreSQL's backends and Redis's server for all hosts together.
On a machine of C cores the hosts share C cores, so the throughput can only grow while the cores
are not busy; the CPU per run is the figure that compares host counts. Every saga must complete,
else exit status 1. `--json` writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import CpuMeter  # noqa: E402
from bench.keys import use_bench_field_keys  # noqa: E402
from bench.partition import Host  # noqa: E402

TERMINAL = ("COMPLETED", "COMPENSATED", "FAILED")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", default="1,2,3", help="host counts, ascending (hosts are added, never removed)")
    p.add_argument("--n", type=int, default=120, help="sagas per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=20, help="sagas run at each count before measuring")
    p.add_argument("--bound", type=float, default=300.0, help="seconds a round may take")
    p.add_argument("--database", default=os.environ.get("SAGA_DATABASE_URL",
                                                        "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench"))
    p.add_argument("--broker", default=os.environ.get("SAGA_BROKER_URL", "redis://127.0.0.1:6379/13"))
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def order(tag: str, i: int, sku: str) -> dict[str, Any]:
    return {"order_id": f"hosts-{tag}-{i}", "customer_id": f"c-{i % 37}", "email": "c@example.com",
            "items": [{"sku": sku, "quantity": 1, "price": "9.99"}], "payment": {"card": "4242424242424242"},
            "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    counts = [int(c) for c in args.hosts.split(",")]
    if counts != sorted(counts) or counts[0] < 1:
        raise SystemExit("--hosts: ascending host counts, from 1 (hosts are added one at a time)")
    os.environ.update({"SAGA_DATABASE_URL": args.database, "SAGA_BROKER_URL": args.broker, "SAGA_EXTRA_MODULES": "",
                       "SAGA_LOG_LEVEL": "WARNING"})
    use_bench_field_keys()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    import psycopg2
    import redis
    from sqlalchemy.engine import make_url

    from bench.run import admin_connection, pg_dsn
    from tasks.schema import migrate

    with admin_connection(args.database) as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (make_url(args.database).database,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{make_url(args.database).database}"')
    migrate(args.database)  # the saga tables and the example shop's
    import worker
    from tasks.inventory import restock
    from workflows import start_saga

    run_id = uuid.uuid4().hex[:8]
    log_dir = Path(tempfile.mkdtemp(prefix=f"hosts-{run_id}-"))
    sku = f"HOSTS-{run_id}"
    restock({sku: 10_000_000})
    pg = psycopg2.connect(pg_dsn(args.database))  # the driver's polling: not counted
    pg.autocommit = True
    r = redis.Redis.from_url(args.broker)
    hosts: list[Host] = []
    failures: list[str] = []
    table: dict[str, Any] = {}

    def say(msg: str) -> None:
        print(f"[hosts {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def left(ids: list[str]) -> int:
        with pg.cursor() as cur:
            cur.execute("SELECT count(*) FROM sagas WHERE id = ANY(%s) AND state <> ALL(%s)", (ids, list(TERMINAL)))
            return int(cur.fetchone()[0])  # type: ignore[index]

    def ms_per_run(seconds: float) -> float:
        return round(1000 * seconds / args.n, 2)

    def burst(tag: str, n: int) -> tuple[list[str], float]:
        """`n` sagas started at once; their ids and the seconds until the last was terminal."""
        t0 = time.monotonic()
        ids = [start_saga("order_fulfillment", order(tag, i, sku), idempotency_key=f"hosts-{tag}-{i}")
               for i in range(n)]
        while left(ids) and time.monotonic() < t0 + args.bound:
            time.sleep(0.1)
        return ids, time.monotonic() - t0

    try:
        for count in counts:
            names: set[str] = set()
            while len(hosts) < count:
                # 10.77.<index>.0/24 per host: apart from partition.py's (1, 2) and another run's
                h = Host("abcdefgh"[len(hosts)], 40 + (os.getpid() % 50) * 4 + len(hosts), log_dir)
                hosts.append(h)
                h.up()
                names |= h.start_workers(env, "per-queue")
            deadline = time.monotonic() + 120
            while {k for rep in worker.app.control.ping(destination=list(names), timeout=1.0) for k in rep} < names:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"hosts not ready; see {log_dir}")
            say(f"{count} host(s) up ({5 * count} worker processes); warm-up, then {args.rounds} x {args.n} sagas")
            burst(f"{run_id}-{count}-warm", args.warmup)
            meters = {h.name: (CpuMeter([w.pid for w in h.workers.values()], pg),
                               CpuMeter([f.pid for f in h.forwarders], pg)) for h in hosts}
            shared = CpuMeter([], pg, r)
            rounds = []
            for k in range(args.rounds):
                before = {name: (w.snapshot(), link.snapshot()) for name, (w, link) in meters.items()}
                shared_before = shared.snapshot()
                ids, seconds = burst(f"{run_id}-{count}-{k}", args.n)
                spent = shared.delta(shared_before, shared.snapshot())
                per_host = {name: {"worker_cpu_ms": ms_per_run(w.delta(before[name][0], w.snapshot()).workers),
                                   "link_cpu_ms": ms_per_run(link.delta(before[name][1], link.snapshot()).workers)}
                            for name, (w, link) in meters.items()}
                not_done = left(ids)
                with pg.cursor() as cur:
                    cur.execute("SELECT count(*) FROM sagas WHERE id = ANY(%s) AND state = 'COMPLETED'", (ids,))
                    completed = int(cur.fetchone()[0])  # type: ignore[index]
                if not_done or completed != args.n:
                    failures.append(f"{count} host(s), round {k}: {completed} of {args.n} completed, {not_done} "
                                    f"not terminal after {args.bound:g} s")
                rounds.append({"per_s": round(args.n / seconds, 1), "seconds": round(seconds, 2), "hosts": per_host,
                               "db_cpu_ms": ms_per_run(spent.db), "redis_cpu_ms": ms_per_run(spent.redis),
                               "busy": round(spent.busy, 2)})
                say(f"{count} host(s), round {k + 1}: {rounds[-1]['per_s']} sagas/s, machine busy {spent.busy:.0%}")
            table[str(count)] = summarize(rounds)
    finally:
        for h in hosts:
            h.down()
    print_table(table, args.n)
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "rounds": args.rounds, "hosts": table, "failures": failures},
                                        indent=2) + "\n")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds: throughput, and per host its workers' and link's CPU per run."""
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    names = list(rounds[0]["hosts"])
    return {"per_s": med([r["per_s"] for r in rounds]), "per_s_rounds": [r["per_s"] for r in rounds],
            "hosts": {n: {key: med([r["hosts"][n][key] for r in rounds]) for key in ("worker_cpu_ms", "link_cpu_ms")}
                      for n in names},
            **{key: med([r[key] for r in rounds]) for key in ("db_cpu_ms", "redis_cpu_ms", "busy")}}


def print_table(table: dict[str, Any], n: int) -> None:
    print(f"\nthroughput per host count ({n} order sagas a round; a pool per queue on each host; "
          "CPU in ms per saga, medians)")
    print(f"{'hosts':<6}{'sagas/s':>9}{'busy':>6}  {'workers CPU per host':<34}{'link':>6}{'wCPU sum':>9}"
          f"{'dbCPU':>7}{'rCPU':>6}")
    for count, row in table.items():
        per_host = " ".join(f"{name}:{h['worker_cpu_ms']:.1f}" for name, h in row["hosts"].items())
        link = sum(h["link_cpu_ms"] for h in row["hosts"].values())
        total = sum(h["worker_cpu_ms"] for h in row["hosts"].values())
        print(f"{count:<6}{row['per_s']:>9.1f}{row['busy']:>6.0%}  {per_host:<34}{link:>6.1f}{total:>9.1f}"
              f"{row['db_cpu_ms']:>7.1f}{row['redis_cpu_ms']:>6.1f}")


if __name__ == "__main__":
    sys.exit(main())
