"""The DBOS Transact configurations of `make bench`: N workflows of 4 no-op steps, `window` in flight.

    .venv/bin/python bench/dbos_peer.py --n 300 --window 8 --database-url postgresql://...
    .venv/bin/python bench/dbos_peer.py --n 300 --window 8 --queue-workers 2 --database-url ...

Runs in a process of its own, on its own database of the same PostgreSQL server as the sagas.
In-process (the default), this process launches DBOS and runs the workflows itself: the driver
threads keep `window` workflows in flight (start one, wait for its result, start the next), as
the saga driver keeps `window` sagas in flight. With `--queue-workers K`, the workflows are
enqueued on a DBOS queue (`DBOSClient.enqueue`, this process does not launch DBOS) and run by K
worker processes of their own, each a launched DBOS application dequeuing from it: the peer of
sagas whose steps are messages to separate worker pools. Their queue is polled every
`QUEUE_POLL` seconds and a result every `RESULT_POLL` (DBOS's defaults, 1 s each, would measure
the polls), as the saga driver polls its runs every 5 ms.
Prints one JSON line: throughput, each workflow's latency, and the CPU seconds of this process
(driver and DBOS together) and, with workers, of those worker processes during the phase.
Optional: needs `pip install -e ".[bench]"`; `bench/run.py` skips the configuration without it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

QUEUE = "bench"
WORKFLOW = "bench.four"
QUEUE_POLL = 0.01
RESULT_POLL = 0.005


def declare(args: argparse.Namespace, executor: str | None = None) -> None:
    """DBOS with the 4-step workflow (and its queue); not launched yet."""
    import logging

    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {"name": "saga-bench-peer", "system_database_url": args.database_url,
                          "log_level": "WARNING", "run_admin_server": False}
    if executor is not None:
        config["executor_id"] = executor
    DBOS(config=config)
    logging.getLogger("dbos").setLevel(logging.WARNING)

    @DBOS.step()
    def noop(k: int) -> int:
        return k

    @DBOS.workflow(name=WORKFLOW)
    def four(i: int) -> int:
        for k in range(4):
            noop(k)
        return i

    globals()["four"] = four


def serve(args: argparse.Namespace) -> int:
    """A queue worker: launch DBOS, dequeue and run workflows until stdin closes."""
    from dbos import DBOS

    declare(args, executor=f"bench-worker-{os.getpid()}")
    DBOS.launch()
    DBOS.register_queue(QUEUE, polling_interval_sec=QUEUE_POLL, worker_concurrency=args.window)
    print("ready", flush=True)
    sys.stdin.read()  # the driver closes it to stop this worker
    DBOS.destroy()
    return 0


def cpu_of(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError):
            continue
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--queue-workers", type=int, default=0,
                   help="run the workflows off a DBOS queue in this many worker processes (0: in this process)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # a queue worker (started by the driver)
    p.add_argument("--database-url", required=True, help="postgresql:// URL of the DBOS system database")
    args = p.parse_args(argv)
    if args.serve:
        return serve(args)

    workers: list[subprocess.Popen[str]] = []
    run_one: Callable[[int], object]
    if args.queue_workers:
        from dbos import DBOSClient

        for _ in range(args.queue_workers):
            workers.append(subprocess.Popen(
                [sys.executable, __file__, "--serve", "--window", str(args.window), "--database-url",
                 args.database_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            if workers[-1].stdout is None or workers[-1].stdout.readline().strip() != "ready":
                raise SystemExit("a DBOS queue worker did not start")
        client = DBOSClient(system_database_url=args.database_url)

        def run_one(i: int) -> object:
            return client.enqueue({"queue_name": QUEUE, "workflow_name": WORKFLOW}, i).get_result(
                polling_interval_sec=RESULT_POLL)
    else:
        from dbos import DBOS

        declare(args)
        DBOS.launch()
        four = globals()["four"]

        def run_one(i: int) -> object:
            return DBOS.start_workflow(four, i).get_result()

    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(10**9))

    def loop(total: int, record: bool) -> None:
        while True:
            with lock:
                i = next(counter, total)
                if i >= total:
                    return
            t0 = time.time()
            run_one(i)
            if record:
                with lock:
                    latencies.append(time.time() - t0)

    def phase(n: int, window: int, record: bool) -> float:
        nonlocal counter
        counter = iter(range(n))
        threads = [threading.Thread(target=loop, args=(n, record)) for _ in range(window)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.time() - t0

    try:
        phase(args.warmup, args.window, False)
        pids = [w.pid for w in workers]
        cpu0, wcpu0 = time.process_time(), cpu_of(pids)
        elapsed = phase(args.n, args.window, True)
        cpu = time.process_time() - cpu0 + cpu_of(pids) - wcpu0
    finally:
        for w in workers:
            if w.stdin is not None:
                w.stdin.close()
        for w in workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                w.kill()
    if args.queue_workers:
        client.destroy()
    else:
        from dbos import DBOS

        DBOS.destroy()
    print(json.dumps({"n": args.n, "elapsed": elapsed, "latencies": latencies, "cpu": cpu, "pid": os.getpid(),
                      "queue_workers": args.queue_workers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
