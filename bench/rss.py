"""Worker RSS across many sagas: flat, or growing with the number of sagas run?

`bench/run.py --rss-check` starts the bench worker, warms it up, then runs sagas (or chains, with
--rss-config) in cumulative batches (by default 500, then 5000 more) and reads each worker
process's RSS after each batch. A process is flat if it grew by at most max(4 MB, 5%) from the
first reading to the last: a leak proportional to sagas run shows as megabytes over 5000 sagas.

Without `workflows.timer_heap` the worker's main process grew until it held a cancelled timer
entry for every task of the last `step timeout` seconds (kombu's timer heap keeps them until they
would have fired): +23 MB over the first 10,000 sagas with the default 300 s timeout. That worker
step drops them every 10 s. More batches (--rss-n 500,5000,5000,5000) show any slower growth:
`steady_growth_mb` is the growth between the last two readings.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

TOLERANCE_MB = 4.0
TOLERANCE_FRACTION = 0.05


def rss_check(args: argparse.Namespace) -> dict[str, Any]:
    from bench.harness import tree_rss
    from bench.run import Session

    sizes = [int(x) for x in args.rss_n.split(",") if x.strip()]
    readings: list[dict[str, Any]] = []
    config = args.rss_config
    started = time.monotonic()
    with Session(args) as s:
        main_pid = str(s.worker.proc.pid)
        s.measure(config, max(args.warmup, 100), tag="rss-warm-")
        done = 0
        for k, n in enumerate(sizes):
            phase = s.measure(config, n, tag=f"rss{k}-")
            done += n
            time.sleep(0.5)
            rss = tree_rss(s.worker.proc.pid)
            readings.append({"runs": done, "at_s": round(time.monotonic() - started),
                             "rss_mb": {str(pid): round(v / 2**20, 1) for pid, v in rss.items()},
                             "total_mb": round(sum(rss.values()) / 2**20, 1),
                             "throughput": round(phase.throughput, 1), "errors": phase.errors})
            print(f"  after {done:>6} runs ({readings[-1]['at_s']} s): worker tree {readings[-1]['total_mb']:.1f} MB "
                  f"{readings[-1]['rss_mb']} ({phase.throughput:.1f}/s)", flush=True)
    growth = _growth(readings[0], readings[-1])
    steady = _growth(readings[-2], readings[-1]) if len(readings) > 2 else None
    flat = {pid: g <= max(TOLERANCE_MB, TOLERANCE_FRACTION * readings[0]["rss_mb"][pid]) for pid, g in growth.items()}
    children_flat = all(ok for pid, ok in flat.items() if pid != main_pid)
    print(f"  growth per process, first to last reading (MB): {growth} (main process {main_pid}) -> "
          f"pool processes {'flat' if children_flat else 'GROWING'}, main {'flat' if flat[main_pid] else 'growing'}")
    if steady is not None:
        print(f"  growth between the last two readings (MB): {steady}")
    return {"config": config, "readings": readings, "main_pid": main_pid, "growth_mb": growth,
            "steady_growth_mb": steady, "pool_processes_flat": children_flat, "flat": all(flat.values()),
            "tolerance": f"max({TOLERANCE_MB} MB, {TOLERANCE_FRACTION:.0%}) per process"}


def _growth(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {pid: round(b["rss_mb"].get(pid, 0.0) - mb, 1) for pid, mb in a["rss_mb"].items()}
