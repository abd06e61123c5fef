"""Partition: two worker hosts in network namespaces of their own, one cut off, the other killed.

    sudo .venv/bin/python bench/partition.py --n 120     # root: it makes namespaces and veth pairs

Each "host" is a network namespace (`ip netns`) joined to this machine by a veth pair; socat on
this side forwards its PostgreSQL and Redis ports to the servers on 127.0.0.1, so each host's
workers reach the database and the broker only through their own link. Both hosts run a worker
(prefork, every queue of `order_fulfillment`), or with `--pools per-queue` a pool per queue (the
orchestrator's and each service's, as the seeds deploy them). While sagas are started at a steady rate, host A's
link is cut (`ip link set ... down`) for `--cut` seconds and healed, and host B is killed outright
(SIGKILL of its whole worker) while A is cut off: for a while no worker reaches anything. The
driver (this process, on the host's loopback) runs the sweeper every 2 s. Then every saga must be
terminal within the bound and no effect doubled (`bench/chaos_invariants.check`: one reservation,
charge, shipment, confirmation per COMPLETED saga; everything undone once in a COMPENSATED one;
stock consistent). Exit status 1 on any violation.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.keys import use_bench_field_keys  # noqa: E402

QUEUES = "saga,inventory,payment,shipping,notification"
TERMINAL = ("COMPLETED", "COMPENSATED", "FAILED")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Host:
    """A network namespace with a veth link to this machine, socat forwarders, and one worker."""

    def __init__(self, name: str, index: int, log_dir: Path) -> None:
        self.name, self.ns = name, f"sagas-{name}-{os.getpid() % 10000}"
        self.link = f"vs{name}{os.getpid() % 10000}"[:15]
        self.gateway, self.address = f"10.77.{index}.1", f"10.77.{index}.2"
        self.log = log_dir / f"host-{name}.log"
        self.forwarders: list[subprocess.Popen[bytes]] = []
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def up(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.link)
        sh("ip", "link", "set", self.link, "up")
        for cmd in (("ip", "addr", "add", f"{self.address}/24", "dev", "eth0"), ("ip", "link", "set", "eth0", "up"),
                    ("ip", "link", "set", "lo", "up"), ("ip", "route", "add", "default", "via", self.gateway)):
            sh("ip", "netns", "exec", self.ns, *cmd)
        for port in (5432, 6379):
            self.forwarders.append(subprocess.Popen(
                ["socat", f"TCP-LISTEN:{port},bind={self.gateway},fork,reuseaddr", f"TCP:127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

    def start_workers(self, env: dict[str, str], pools: str) -> set[str]:
        """One worker consuming every queue (`all`), or one per queue, as the seeds deploy them
        (`per-queue`, one process each); their node names."""
        if pools == "all":
            return {self.start_worker(env, QUEUES, f"{self.name}-{os.getpid()}", 2)}
        return {self.start_worker(env, q, f"{self.name}-{q}-{os.getpid()}", 1) for q in QUEUES.split(",")}

    def start_worker(self, env: dict[str, str], queues: str, node: str, concurrency: int) -> str:
        env = {**env, "SAGA_DATABASE_URL": env["SAGA_DATABASE_URL"].replace("127.0.0.1", self.gateway),
               "SAGA_BROKER_URL": env["SAGA_BROKER_URL"].replace("127.0.0.1", self.gateway),
               "TEST_REDIS_URL": env["SAGA_BROKER_URL"].replace("127.0.0.1", self.gateway)}
        cmd = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "celery", "-A", "worker", "worker", "-P",
               "prefork", "-c", str(concurrency), "-Q", queues, "-n", f"{node}@%h", "--loglevel=WARNING",
               "--without-gossip", "--without-mingle"]
        self.workers[node] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log.open("a"),
                                              stderr=subprocess.STDOUT, start_new_session=True)
        return f"{node}@{socket.gethostname()}"

    def cut(self) -> None:
        sh("ip", "link", "set", self.link, "down")

    def heal(self) -> None:
        sh("ip", "link", "set", self.link, "up")

    def kill(self) -> None:
        for worker in self.workers.values():
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()

    def down(self) -> None:
        self.kill()
        for f in self.forwarders:  # with the copies it forked per connection: a killed worker's would stay
            os.killpg(f.pid, signal.SIGKILL)
            f.wait()
        subprocess.run(["ip", "link", "del", self.link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=120)
    p.add_argument("--rate", type=float, default=3.0, help="sagas started per second")
    p.add_argument("--cut", type=float, default=30.0, help="seconds host A is cut off")
    p.add_argument("--bound", type=float, default=180.0, help="seconds after the last start for all to finish")
    p.add_argument("--database", default="postgresql+psycopg://postgres@127.0.0.1:5432/test_partition")
    p.add_argument("--broker", default="redis://127.0.0.1:6379/11")
    p.add_argument("--visibility-timeout", type=int, default=10)
    p.add_argument("--pools", choices=("all", "per-queue"), default="all",
                   help="per host: one worker on every queue, or one per queue (as the seeds deploy them)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.update({"SAGA_DATABASE_URL": args.database, "SAGA_BROKER_URL": args.broker, "SAGA_EXTRA_MODULES": "",
                       "SAGA_REDIS_VISIBILITY_TIMEOUT": str(args.visibility_timeout),
                       "SAGA_REDIS_VISIBILITY_CHECK": "0",  # short on purpose: a dead host's messages come back
                       "SAGA_DISPATCH_GRACE": "10", "SAGA_LOG_LEVEL": "WARNING"})
    use_bench_field_keys()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    from tasks.schema import migrate  # the saga tables and the example shop's

    migrate(args.database)
    import worker
    from bench.chaos_invariants import broker_dead_letter_ids, check, load
    from tasks.inventory import available, restock
    from workflows import start_saga
    from workflows.operations.sweeper import sweep

    run_id = uuid.uuid4().hex[:8]
    log_dir = Path(tempfile.mkdtemp(prefix=f"partition-{run_id}-"))
    skus = {f"PART-{run_id}-{k}": 100_000 for k in range(3)}
    restock(skus)
    hosts = [Host("a", 1, log_dir), Host("b", 2, log_dir)]
    figures: dict[str, Any] = {"run_id": run_id, "logs": str(log_dir), "n": args.n, "cut_s": args.cut,
                               "pools": args.pools}
    stop = threading.Event()

    def say(msg: str) -> None:
        print(f"[partition {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def sweeper() -> None:
        while not stop.wait(2.0):
            try:
                sweep(worker.runtime)
            except Exception as e:  # noqa: BLE001 (the next sweep retries)
                say(f"sweep failed: {e}")

    try:
        names: set[str] = set()
        for h in hosts:
            h.up()
            names |= h.start_workers(env, args.pools)
        deadline = time.monotonic() + 90
        while {k for r in worker.app.control.ping(destination=list(names), timeout=1.0) for k in r} < names:
            if time.monotonic() > deadline:
                raise RuntimeError(f"hosts not ready; see {log_dir}")
        say(f"hosts a and b up (logs in {log_dir}); starting {args.n} sagas at {args.rate}/s")
        threading.Thread(target=sweeper, daemon=True).start()
        cut_at, kill_at = args.n // 4, args.n // 4 + int(args.rate * args.cut / 3)
        ids: list[str] = []
        t0 = time.monotonic()
        for i in range(args.n):
            if i == cut_at:
                hosts[0].cut()
                figures["cut_at_s"] = round(time.monotonic() - t0, 1)
                say(f"host a cut off for {args.cut:g} s")
                threading.Timer(args.cut, lambda: (hosts[0].heal(), say("host a healed"))).start()
            if i == kill_at:
                hosts[1].kill()
                figures["b_killed_at_s"] = round(time.monotonic() - t0, 1)
                say("host b killed outright")
            order = {"order_id": f"part-{run_id}-{i}", "customer_id": f"c-{i % 37}", "email": "c@example.com",
                     "items": [{"sku": sorted(skus)[i % len(skus)], "quantity": 1 + i % 3, "price": "9.99"}],
                     "payment": {"card": "4242424242424242"},
                     "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}
            ids.append(start_saga("order_fulfillment", order, idempotency_key=order["order_id"]))
            time.sleep(1.0 / args.rate)
        last = time.monotonic()
        from sqlalchemy import func, select

        from workflows.store.models import SagaRow
        left = len(ids)
        while time.monotonic() < last + args.bound:
            with worker.runtime.store.sessions() as s:
                left = int(s.scalar(select(func.count()).select_from(SagaRow).where(
                    SagaRow.id.in_(ids), SagaRow.state.not_in(TERMINAL))) or 0)
            if left == 0:
                break
            time.sleep(1.0)
        figures["seconds_after_last_start"] = round(time.monotonic() - last, 1)
        figures["seconds_total"] = round(time.monotonic() - t0, 1)
        figures["not_terminal_at_bound"] = left
    finally:
        stop.set()
        for h in hosts:
            h.down()
    import redis

    stock = {sku: (start, available(sku) or 0) for sku, start in skus.items()}
    found, violations = check(load(worker.runtime.store, ids), ids, stock,
                              broker_dead_letter_ids(redis.Redis.from_url(args.broker)))
    figures.update(found)
    if left:
        violations.append(f"{left} saga(s) not terminal {args.bound:g} s after the last start")
    print(json.dumps(figures, indent=2, sort_keys=True, default=str))
    for v in violations[:50]:
        print("VIOLATION", v)
    print(f"{len(violations)} violation(s)" if violations else "every invariant held")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "violations": violations}, indent=2, default=str))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
