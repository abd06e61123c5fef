"""The DBOS Transact configuration of `make bench`: N workflows of 4 no-op steps, `window` in flight.

    .venv/bin/python bench/dbos_peer.py --n 300 --window 8 --database-url postgresql://...

Runs in a process of its own (DBOS executes workflows in the process that launched it), on its
own database of the same PostgreSQL server as the sagas. The driver threads keep `window`
workflows in flight (start one, wait for its result, start the next), as the saga driver keeps
`window` sagas in flight. Prints one JSON line: throughput, each workflow's latency, and the CPU
seconds of this process (driver and DBOS together) and of the database backends serving it.
Optional: needs `pip install -e ".[bench]"`; `bench/run.py` skips the configuration without it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--database-url", required=True, help="postgresql:// URL of the DBOS system database")
    args = p.parse_args(argv)

    import logging

    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {"name": "saga-bench-peer", "system_database_url": args.database_url,
                          "log_level": "WARNING", "run_admin_server": False}
    DBOS(config=config)
    logging.getLogger("dbos").setLevel(logging.WARNING)

    @DBOS.step()
    def noop(k: int) -> int:
        return k

    @DBOS.workflow()
    def four(i: int) -> int:
        for k in range(4):
            noop(k)
        return i

    DBOS.launch()
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(10**9))

    def loop(total: int, record: bool) -> None:
        while True:
            with lock:
                i = next(counter)
                if i >= total:
                    return
            t0 = time.time()
            DBOS.start_workflow(four, i).get_result()
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

    phase(args.warmup, args.window, False)
    cpu0 = time.process_time()
    elapsed = phase(args.n, args.window, True)
    cpu = time.process_time() - cpu0
    DBOS.destroy()
    print(json.dumps({"n": args.n, "elapsed": elapsed, "latencies": latencies, "cpu": cpu, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
