"""Throughput against worker processes: where the knee is and what saturates (`make bench-scale`).

    .venv/bin/python bench/scale.py                       # prefork 1, 2, 4 and two workers of 2
    .venv/bin/python bench/scale.py --shapes 1,2 --n 200
    .venv/bin/python bench/scale.py --pgbouncer           # each shape also through PgBouncer (transaction mode)
    sudo .venv/bin/python bench/scale.py --shapes '' --hosts 1,2,3   # only the throughput per host count

Runs `bench/run.py` once per shape on the same configurations (the saga on one queue, the chain
with one UPDATE per task, the saga on four queues) and prints, per shape, each configuration's
median throughput and the CPU it cost per run in the workers and in PostgreSQL. On a machine of
C cores, a shape whose worker CPU per second nears C (or whose PostgreSQL CPU climbs) is where
adding processes stops paying. With `--pgbouncer` (`make bench-scale` when pgbouncer is installed)
each shape runs a second time with the workers and the driver on a PgBouncer in transaction mode in
front of the same PostgreSQL (`tests/support/servers.py`, `?prepare_threshold=none`): rows `<shape>
pgb`, beside the direct ones. PostgreSQL's CPU is counted, PgBouncer's own is not. Writes
bench/scale.json.

With `--hosts 1,2,3` (`make bench-scale` when socat is installed; it needs root) it then runs
`bench/hosts.py`: 1, 2 and 3 worker hosts in network namespaces of their own, a pool per queue on
each, `--hosts-n` order sagas a round: throughput per host count and the CPU per run on each host.
Writes bench/hosts.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench"
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
    p.add_argument("--pgbouncer", action="store_true", help="each shape also through PgBouncer (transaction mode)")
    p.add_argument("--database-url", default=os.environ.get("SAGA_DATABASE_URL", DEFAULT_DB))
    p.add_argument("--hosts", default="", help="host counts for bench/hosts.py (e.g. 1,2,3; root), after the shapes")
    p.add_argument("--hosts-n", type=int, default=120, help="order sagas a round in bench/hosts.py")
    args, rest = p.parse_known_args(argv)
    table = {}
    with ExitStack() as stack:
        vias = [("", args.database_url)]
        if args.pgbouncer:
            from tests.support.servers import pgbouncer

            vias.append((" pgb", stack.enter_context(pgbouncer(args.database_url, pool_size=20))))
        for shape in filter(None, args.shapes.split(",")):
            for suffix, url in vias:
                table[shape + suffix] = run_shape(shape, url, args, rest)
    if table:
        print_shapes(table, args)
    if args.hosts:
        return run_hosts(args)
    return 0


def run_hosts(args: argparse.Namespace) -> int:
    """bench/hosts.py over `args.hosts` (network namespaces: root only), on the same database."""
    if os.geteuid() != 0:
        print("\n--hosts skipped: bench/hosts.py makes network namespaces and needs root")
        return 0
    cmd = [sys.executable, str(ROOT / "bench" / "hosts.py"), "--hosts", args.hosts, "--n", str(args.hosts_n),
           "--rounds", str(args.rounds), "--database", args.database_url,
           "--json", str(args.output.with_name("hosts.json"))]
    return subprocess.run(cmd, cwd=ROOT).returncode


def print_shapes(table: dict[str, dict], args: argparse.Namespace) -> None:
    args.output.write_text(json.dumps(table, indent=2) + "\n")
    names = args.configs.split(",")
    print(f"\n{'shape':<9}" + "".join(f"{n + ' /s':>22}{'wCPU':>7}{'dbCPU':>7}{'rCPU':>6}{'busy':>6}" for n in names))
    for shape, row in table.items():
        print(f"{shape:<9}" + "".join(f"{row[n]['per_s']:>22.1f}{row[n]['worker_cpu_ms']:>7.1f}"
                                      f"{row[n]['db_cpu_ms']:>7.1f}{row[n]['redis_cpu_ms']:>6.1f}"
                                      f"{row[n]['busy'] or 0:>6.0%}" for n in names if n in row))
    print(f"\nwrote {args.output}")


def run_shape(shape: str, database_url: str, args: argparse.Namespace, rest: list[str]) -> dict[str, dict]:
    workers, conc = parse_shape(shape)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--n", str(args.n), "--rounds",
                        str(args.rounds), "--configs", args.configs, "--workers", str(workers), "--concurrency",
                        str(conc), "--window", str(max(8, 4 * workers * conc)), "--unloaded-n", "0",
                        "--database-url", database_url, "--output", out.name, *rest], check=True, cwd=ROOT)
        doc = json.loads(Path(out.name).read_text())
    return {name: {"per_s": c["throughput"]["median"], "worker_cpu_ms": c["worker_cpu_ms_per_saga"],
                   "db_cpu_ms": c["db_cpu_ms_per_saga"], "redis_cpu_ms": c["redis_cpu_ms_per_saga"],
                   "busy": c["machine_busy"], "p99_ms": c["latency_ms"]["p99"]}
            for name, c in doc["configs"].items()}


if __name__ == "__main__":
    sys.exit(main())
