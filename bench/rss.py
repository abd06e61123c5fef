"""Worker RSS across many sagas: flat, or growing with the number of sagas run?

`bench/run.py --rss-check` starts the bench worker, warms it up, then runs happy-path sagas in
cumulative batches (by default 500, then 5000 more) and reads each worker process's RSS after
each batch. Flat means no process grew by more than max(4 MB, 5%) between the first and the last
reading: a leak proportional to sagas run would show as megabytes over 5000 sagas.
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
    with Session(args) as s:
        s.measure("saga", max(args.warmup, 100), tag="rss-warm-")
        done = 0
        for k, n in enumerate(sizes):
            phase = s.measure("saga", n, tag=f"rss{k}-")
            done += n
            time.sleep(0.5)
            rss = tree_rss(s.worker.proc.pid)
            readings.append({"sagas_run": done, "rss_mb": {str(pid): round(v / 2**20, 1) for pid, v in rss.items()},
                             "total_mb": round(sum(rss.values()) / 2**20, 1),
                             "throughput": round(phase.throughput, 1), "errors": phase.errors})
            print(f"  after {done:>6} sagas: worker tree {readings[-1]['total_mb']:.1f} MB "
                  f"{readings[-1]['rss_mb']} ({phase.throughput:.1f}/s)", flush=True)
    first, last = readings[0]["rss_mb"], readings[-1]["rss_mb"]
    growth = {pid: round(last.get(pid, 0.0) - mb, 1) for pid, mb in first.items()}
    flat = all(g <= max(TOLERANCE_MB, TOLERANCE_FRACTION * first[pid]) for pid, g in growth.items())
    print(f"  growth per process (MB): {growth} -> {'flat' if flat else 'GROWING'}")
    return {"readings": readings, "growth_mb": growth, "flat": flat,
            "tolerance": f"max({TOLERANCE_MB} MB, {TOLERANCE_FRACTION:.0%}) per process"}
