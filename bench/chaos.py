"""Chaos: N order sagas on three worker pools, faults injected, workers SIGKILLed; then every invariant.

    .venv/bin/python bench/chaos.py --n 2000     # by hand: on a private Redis, restarted once mid-run
    tests/servers/test_chaos.py                  # in `make test`: --n 200 on the test Redis
    .venv/bin/python bench/chaos.py --n 200 --broker amqp://guest:guest@127.0.0.1:5672/chaos \
        --probe-redis redis://127.0.0.1:6379/12  # on RabbitMQ (the probe counts in a Redis)

Three pools (`celery -A worker worker -Q ...`, one per group of services, each queue served by
two of them) run `order_fulfillment` while the services fail at random (transient and permanent,
actions and compensations), a killer SIGKILLs a random pool every few seconds and restarts it,
and the driver runs the sweeper. When every saga is terminal (or the bound passed), the
invariants of `bench/chaos_invariants.py` are checked; the exit status is 1 if any was broken.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.keys import use_bench_field_keys  # noqa: E402

POOLS = {  # every queue is served by two pools: one kill never stalls a queue
    "orders-a": "saga,inventory,payment",
    "orders-b": "payment,shipping,notification",
    "orders-c": "saga,inventory,shipping,notification",
}
FAULTS = [  # service, permanent, operation, rate (probability that a call fails)
    ("inventory", False, "any", 0.10),  # reservations and releases flake; retried
    ("payment", True, "any", 0.08),  # charges declined (compensated), refunds refused (FAILED)
    ("shipping", False, "action", 0.20),  # flaky carrier; sometimes exhausted (dead letter)
    ("notification", True, "action", 0.10),  # the last step fails for good: everything is undone
]
TERMINAL = ("COMPLETED", "COMPENSATED", "FAILED")


class Pool:
    """One `celery -A worker worker -P prefork` process group, killed and restarted by the killer."""

    def __init__(self, name: str, queues: str, env: dict[str, str], log_dir: Path, concurrency: int = 2) -> None:
        self.name, self.queues, self.env, self.concurrency = name, queues, env, concurrency
        self.log = log_dir / f"{name}.log"
        self.node = f"{name}@{socket.gethostname()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork", "-c", str(self.concurrency),
               "-Q", self.queues, "-n", f"{self.name}@%h", "--loglevel=WARNING", "--without-gossip",
               "--without-mingle"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class PrivateRedis:
    """A redis-server of our own on a free loopback port, with an fsynced AOF, crashed once on purpose."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="chaos-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(100):
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"private redis-server on port {self.port} did not start")

    def crash_and_restart(self, down: float = 3.0) -> None:
        self.proc.kill()
        self.proc.wait()
        time.sleep(down)
        self.start()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="sagas to run")
    p.add_argument("--rate", type=float, default=8.0, help="sagas started per second (keep it under the throughput)")
    p.add_argument("--database", default=os.environ.get(
        "SAGA_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test_chaos"))
    p.add_argument("--broker", default=None,
                   help="Redis or RabbitMQ (amqp://) URL; default: a private redis-server, restarted once")
    p.add_argument("--probe-redis", default=None,
                   help="Redis URL the delivery probe counts in (default: the broker, which must then be Redis)")
    p.add_argument("--kill-every", type=float, nargs=2, default=(2.0, 5.0), metavar=("MIN", "MAX"),
                   help="seconds between two kills (uniform)")
    p.add_argument("--bound", type=float, default=300.0, help="seconds after the last start for all to finish")
    p.add_argument("--visibility-timeout", type=int, default=10)
    p.add_argument("--dispatch-grace", type=float, default=10.0)
    p.add_argument("--sweep-every", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="write the figures and violations here")
    return p.parse_args(argv)


def configure(args: argparse.Namespace, broker: str) -> dict[str, str]:
    """Settings for this process (set before `worker` is imported) and the pools' environment."""
    probe = args.probe_redis or broker
    if not probe.startswith("redis"):
        raise SystemExit("on RabbitMQ, name a Redis for the delivery probe: --probe-redis redis://...")
    os.environ.update({
        "CHAOS_PROBE_URL": probe,
        "SAGA_DATABASE_URL": args.database, "SAGA_BROKER_URL": broker, "SAGA_EXTRA_MODULES": "",
        "SAGA_REDIS_VISIBILITY_TIMEOUT": str(args.visibility_timeout),
        "SAGA_REDIS_VISIBILITY_CHECK": "0",  # short on purpose: a killed pool's messages come back soon
        "SAGA_DISPATCH_GRACE": str(args.dispatch_grace),
        "SAGA_LOG_LEVEL": "WARNING"})
    use_bench_field_keys()
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class Chaos:
    def __init__(self, args: argparse.Namespace, env: dict[str, str], redis: PrivateRedis | None) -> None:
        import worker

        self.run_id = uuid.uuid4().hex[:8]
        self.args, self.redis = args, redis
        self.env = {**env, "CHAOS_RUN_ID": self.run_id, "SAGA_EXTRA_MODULES": "bench.chaos_probe"}
        self.app, self.rt = worker.app, worker.runtime
        self.rng = random.Random(args.seed)
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"chaos-{self.run_id}-"))
        self.skus = {f"CHAOS-{self.run_id}-{k}": 100_000 for k in range(5)}
        self.stop = threading.Event()
        self.figures: Counter[str] = Counter()
        self.sweeps: Counter[str] = Counter()
        self.pools: list[Pool] = []

    def say(self, msg: str) -> None:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # ------------------------------------------------------------ the run

    def run(self) -> tuple[dict[str, Any], list[str]]:
        from tasks.common import arm_fault, clear_faults
        from tasks.inventory import restock

        restock(self.skus)
        clear_faults()
        for service, permanent, operation, rate in FAULTS:
            arm_fault(service, times=10**9, permanent=permanent, operation=operation, rate=rate,
                      message="chaos")
        self.pools = [Pool(f"{name}-{self.run_id}", queues, self.env, self.log_dir)
                      for name, queues in POOLS.items()]
        try:
            self.wait_ready()
            self.say(f"{len(self.pools)} pools up (logs in {self.log_dir}); starting {self.args.n} sagas")
            threads = [threading.Thread(target=self.killer, daemon=True),
                       threading.Thread(target=self.sweeper, daemon=True)]
            for t in threads:
                t.start()
            t0 = time.monotonic()
            ids = self.start_all()
            started = time.monotonic()
            left = self.wait_terminal(ids, started + self.args.bound)
            self.figures["seconds_to_terminal"] = round(time.monotonic() - t0, 1)
            self.figures["not_terminal_at_bound"] = left
            self.stop.set()
            for t in threads:
                t.join(30)
        finally:
            self.stop.set()
            for pool in self.pools:
                pool.stop()
            clear_faults()
        return self.verify(ids)

    def wait_ready(self) -> None:
        names = {f"{p.name}@{socket.gethostname()}" for p in self.pools}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            replies = self.app.control.ping(destination=list(names), timeout=1.0)
            if {k for r in replies for k in r} >= names:
                return
        raise RuntimeError(f"pools not ready; see {self.log_dir}")

    def start_all(self) -> list[str]:
        from workflows import start_saga

        ids: list[str] = []
        restart_at = self.args.n // 3 if self.redis is not None else -1
        for i in range(self.args.n):
            if i == restart_at:
                threading.Thread(target=self.restart_redis, daemon=True).start()
            order = self.order(i)
            while True:  # the broker may be down: the run is recorded, retrying returns its id
                try:
                    ids.append(start_saga("order_fulfillment", order, idempotency_key=order["order_id"]))
                    break
                except Exception as e:  # noqa: BLE001 (the figures count it)
                    self.figures["start_errors"] += 1
                    self.say(f"start of {order['order_id']} failed ({type(e).__name__}); retrying")
                    time.sleep(1.0)
            time.sleep(1.0 / self.args.rate)
        return ids

    def order(self, i: int) -> dict[str, Any]:
        return {"order_id": f"chaos-{self.run_id}-{i}", "customer_id": f"cust-{i % 97}", "email": "c@example.com",
                "items": [{"sku": self.rng.choice(sorted(self.skus)), "quantity": self.rng.randint(1, 3),
                           "price": "9.99"}],
                "payment": {"card": "4242424242424242"},
                "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}

    def wait_terminal(self, ids: list[str], deadline: float) -> int:
        from sqlalchemy import func, select

        from workflows.store.models import SagaRow

        while True:
            with self.rt.store.sessions() as s:
                left = sum(int(s.scalar(select(func.count()).select_from(SagaRow).where(
                    SagaRow.id.in_(ids[i:i + 1000]), SagaRow.state.not_in(TERMINAL))) or 0)
                    for i in range(0, len(ids), 1000))
            if left == 0 or time.monotonic() > deadline:
                return left
            time.sleep(1.0)

    # ------------------------------------------------------------ the chaos

    def killer(self) -> None:
        import redis as redis_lib

        from bench import chaos_probe

        probe = redis_lib.Redis.from_url(os.environ["CHAOS_PROBE_URL"], socket_timeout=2)
        while not self.stop.wait(self.rng.uniform(*self.args.kill_every)):
            pool = self.aim(probe)
            pool.kill()
            chaos_probe.forget_node(probe, self.run_id, pool.node)
            self.figures["kills"] += 1
            pool.start()

    def aim(self, probe: Any, patience: float = 3.0) -> Pool:
        """A pool with a message in hand (the probe's busy processes), so the kill hits work in flight;
        after `patience` seconds with every pool idle, any pool."""
        from bench import chaos_probe

        deadline = time.monotonic() + patience
        while not self.stop.is_set():
            try:
                busy = chaos_probe.busy_nodes(probe, self.run_id)
            except Exception:  # noqa: BLE001 (the probe's Redis restarting: aim at random)
                busy = set()
            hits = [p for p in self.pools if p.node in busy]
            if hits:
                self.figures["kills_in_flight"] += 1
                return self.rng.choice(hits)
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return self.rng.choice(self.pools)

    def sweeper(self) -> None:
        from workflows.operations.sweeper import sweep

        while not self.stop.wait(self.args.sweep_every):
            try:
                self.sweeps.update(sweep(self.rt).counts())
            except Exception as e:  # noqa: BLE001 (a broker outage: the next sweep retries)
                self.figures["sweep_errors"] += 1
                self.say(f"sweep failed: {type(e).__name__}: {e}")

    def restart_redis(self) -> None:
        assert self.redis is not None
        self.say("crashing Redis (SIGKILL), restarting it in 3 s")
        self.redis.crash_and_restart()
        self.figures["redis_restarts"] += 1
        self.say("Redis is back")

    # ------------------------------------------------------------ the verdict

    def verify(self, ids: list[str]) -> tuple[dict[str, Any], list[str]]:
        import redis as redis_lib

        from bench import chaos_probe
        from bench.chaos_invariants import amqp_dead_letter_ids, broker_dead_letter_ids, check, load
        from tasks.inventory import available

        stock = {sku: (start, available(sku) or 0) for sku, start in self.skus.items()}
        url = os.environ["SAGA_BROKER_URL"]
        on_broker = (amqp_dead_letter_ids(url) if url.startswith("amqp")
                     else broker_dead_letter_ids(redis_lib.Redis.from_url(url)))
        figures, violations = check(load(self.rt.store, ids), ids, stock, on_broker)
        figures.update(self.figures)
        figures["broker"] = url.split("://")[0]
        figures.update(chaos_probe.read(redis_lib.Redis.from_url(os.environ["CHAOS_PROBE_URL"]), self.run_id))
        figures["sweeper"] = {k: v for k, v in self.sweeps.items() if v}
        figures["sagas_per_second"] = round(len(ids) / max(self.figures["seconds_to_terminal"], 0.1), 1)
        figures["run_id"], figures["logs"] = self.run_id, str(self.log_dir)
        return figures, violations


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    redis = PrivateRedis() if args.broker is None else None
    env = configure(args, args.broker or redis.url)  # type: ignore[union-attr]
    from tasks.schema import migrate  # the saga tables and the example shop's

    migrate(args.database)
    try:
        figures, violations = Chaos(args, env, redis).run()
    finally:
        if redis is not None:
            redis.stop()
    print(json.dumps(figures, indent=2, sort_keys=True))
    for v in violations[:50]:
        print("VIOLATION", v)
    print(f"{len(violations)} violation(s)" if violations else "every invariant held")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "violations": violations}, indent=2))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
