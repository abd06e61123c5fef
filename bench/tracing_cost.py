"""What tracing (`SAGA_TRACING=otel`) costs a step: the same sagas with tracing off and on, side by side.

    .venv/bin/python bench/tracing_cost.py                  # N=300 sagas a mode a round, 3 rounds
    .venv/bin/python bench/tracing_cost.py --n 500 --rounds 5

One process runs `bench.noop4` (four no-op steps, one queue) through the real step path
(`handle_step`: the run's read, the step, the transition's commit on PostgreSQL, the next message
built, its follow-ups run inline as a worker runs them) with a dispatcher that records what it
would publish instead of a broker. "on" is the `otel` extra's spans: a span per attempt, the start's
segment, the `traceparent` of every message, exported by the SDK's batch processor over OTLP/HTTP to
a receiver in this process that reads and discards them (its CPU counts: it is the exporter's
peer). Rounds alternate the modes; the medians are per step (a saga's time / 4), wall and CPU of
this process. Needs the `otel` and `bench` extras' packages (`make bench` installs them) and a
PostgreSQL database it may write to: TEST_BENCH_PG_URL or --database-url.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEPS = 4
_providers: list[Any] = []
"""The tracer providers made here: flushed before the receiver stops."""


class _Discard(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def runtime(url: str, traced: bool, endpoint: str) -> Any:
    from workflows.runtime.container import Runtime
    from workflows.runtime.dispatch import RecordingDispatcher
    from workflows.runtime.settings import Settings
    from workflows.runtime.tracing import NO_TRACING

    tracing: Any = NO_TRACING
    if traced:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from workflows.runtime.otel import OtelTracing

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
        _providers.append(provider)
        tracing = OtelTracing(provider.get_tracer("workflows"), park_after=60)
    return Runtime(app=None, settings=Settings(database_url=url, dispatch_grace=86400),
                   _dispatcher=RecordingDispatcher(tracing=tracing), _tracing=tracing)


def run_one(rt: Any) -> None:
    """One saga to its end: every recorded step message delivered to its step task, follow-ups inline."""
    from workflows import start_saga
    from workflows.core.steps import step_tasks
    from workflows.orchestration.inline import budget_for
    from workflows.orchestration.step_task import Delivery, handle_step

    start_saga("bench.noop4", {"i": uuid.uuid4().hex})
    while sent := [m for m in rt.dispatcher.take() if m.kind == "step"]:
        for m in sent:
            st = step_tasks.get(m.task)
            handle_step(rt, st, m.saga_id, m.step, Delivery(m.task_id, kwargs=m.kwargs, headers=m.headers or None),
                        inline=budget_for(frozenset({st.queue}), None, time.monotonic(), 16), **m.kwargs)


def measure(rt: Any, n: int) -> tuple[list[float], list[float]]:
    from workflows.runtime.container import activate

    walls, cpus = [], []
    with activate(rt):
        for _ in range(n):
            w0, c0 = time.perf_counter(), time.process_time()
            run_one(rt)
            walls.append((time.perf_counter() - w0) / STEPS * 1000)
            cpus.append((time.process_time() - c0) / STEPS * 1000)
    return walls, cpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="sagas per mode per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--database-url", default=os.environ.get(
        "TEST_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench"))
    args = p.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("BENCH_RUN_ID", "tracing-cost")
    import bench.bench_tasks  # noqa: F401  (registers bench.noop4)
    from workflows.store.db import migrate

    migrate(args.database_url)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    runtimes = {"off": runtime(args.database_url, False, endpoint), "on": runtime(args.database_url, True, endpoint)}
    measure(runtimes["off"], 20)  # warm up: connections, compiled statements
    measure(runtimes["on"], 20)
    results: dict[str, tuple[list[float], list[float]]] = {"off": ([], []), "on": ([], [])}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            walls, cpus = measure(runtimes[mode], args.n)
            results[mode][0].extend(walls)
            results[mode][1].extend(cpus)
    for provider in _providers:
        provider.shutdown()  # what is still batched goes out (its cost is counted in no step)
    receiver.shutdown()
    print(f"per step, medians of {args.rounds} x {args.n} sagas of {STEPS} steps (bench.noop4, PostgreSQL):")
    print(f"{'tracing':<8} {'wall ms':>8} {'CPU ms':>8} {'p90 wall ms':>12}")
    for mode, (walls, cpus) in results.items():
        print(f"{mode:<8} {statistics.median(walls):8.3f} {statistics.median(cpus):8.3f} "
              f"{statistics.quantiles(walls, n=10)[-1]:12.3f}")
    off, on = (statistics.median(results[m][1]) for m in ("off", "on"))
    print(f"tracing on costs {on - off:+.3f} ms of CPU per step ({(on / off - 1) * 100:+.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
