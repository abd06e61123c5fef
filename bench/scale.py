"""Throughput against worker processes: where the knee is and what saturates (`make bench-scale`).

    .venv/bin/python bench/scale.py                       # prefork 1, 2, 4 and two workers of 2
    .venv/bin/python bench/scale.py --shapes 1,2 --n 200

Runs `bench/run.py` once per shape on the same configurations (the saga on one queue, the chain
with one UPDATE per task, the saga on four queues) and prints, per shape, each configuration's
median throughput and the CPU it cost per run in the workers and in PostgreSQL. On a machine of
C cores, a shape whose worker CPU per second nears C (or whose PostgreSQL CPU climbs) is where
adding processes stops paying. Writes bench/scale.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = "baseline_state,saga,saga_queues"


def parse_shape(shape: str) -> tuple[int, int]:
    """'4' -> one worker of 4 processes; '2x2' -> two workers of 2."""
    workers, _, conc = shape.partition("x")
    return (int(workers), int(conc)) if conc else (1, int(workers))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="1,2,4,2x2")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", default=CONFIGS)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "scale.json")
    args, rest = p.parse_known_args(argv)
    table = {}
    for shape in args.shapes.split(","):
        workers, conc = parse_shape(shape)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--n", str(args.n), "--rounds",
                            str(args.rounds), "--configs", args.configs, "--workers", str(workers), "--concurrency",
                            str(conc), "--window", str(max(8, 4 * workers * conc)), "--unloaded-n", "0",
                            "--output", out.name, *rest], check=True, cwd=ROOT)
            doc = json.loads(Path(out.name).read_text())
        table[shape] = {name: {"per_s": c["throughput"]["median"], "worker_cpu_ms": c["worker_cpu_ms_per_saga"],
                               "db_cpu_ms": c["db_cpu_ms_per_saga"], "redis_cpu_ms": c["redis_cpu_ms_per_saga"],
                               "busy": c["machine_busy"], "p99_ms": c["latency_ms"]["p99"]}
                        for name, c in doc["configs"].items()}
    args.output.write_text(json.dumps(table, indent=2) + "\n")
    names = args.configs.split(",")
    print(f"\n{'shape':<8}" + "".join(f"{n + ' /s':>22}{'wCPU':>7}{'dbCPU':>7}{'rCPU':>6}{'busy':>6}" for n in names))
    for shape, row in table.items():
        print(f"{shape:<8}" + "".join(f"{row[n]['per_s']:>22.1f}{row[n]['worker_cpu_ms']:>7.1f}"
                                      f"{row[n]['db_cpu_ms']:>7.1f}{row[n]['redis_cpu_ms']:>6.1f}"
                                      f"{row[n]['busy'] or 0:>6.0%}" for n in names if n in row))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
