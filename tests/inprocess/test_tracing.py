"""Traces of saga runs (`SAGA_TRACING=otel`), in process: the real store and loop on SQLite, the
in-process `Worker` delivering what the recording dispatcher recorded (headers included), the test's
clock, and OpenTelemetry's in-memory exporter. The same in real prefork workers exporting over OTLP:
tests/servers/test_tracing_workers.py.

Given a run, then: one trace, the start's span at its root, a span per step attempt and per
compensation attempt, each the child of the one that dispatched it; a run that parks (a wait, a
long backoff) goes on in a new trace linked to the one before, and the run records its segment.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (make install installs it)")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

import tests.support.traced_sagas  # noqa: E402,F401  (registers the sagas)
from workflows.testing import Clock, Worker  # noqa: E402
from workflows import get_saga, start_saga  # noqa: E402
from workflows.choreography.envelope import make_envelope, parse_envelope  # noqa: E402
from workflows.operations.signals import signal  # noqa: E402
from workflows.runtime.container import Runtime  # noqa: E402
from workflows.runtime.dispatch import RecordingDispatcher  # noqa: E402
from workflows.runtime.otel import OtelTracing, format_context, parse  # noqa: E402
from workflows.runtime.tracing import TRACE_LINK, TRACEPARENT  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p


@pytest.fixture
def saga_tracing(provider: TracerProvider, saga_clock: Clock) -> OtelTracing:
    """The kit's runtime traced, its spans exported to memory (the kit builds `rt` and `worker` on it)."""
    return OtelTracing(provider.get_tracer("workflows"), park_after=60, clock=saga_clock)


def named(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_one_run_is_one_trace_with_a_span_per_attempt_each_the_child_of_the_one_before(
        rt: Runtime, worker: Worker, exporter: InMemorySpanExporter) -> None:
    saga_id = start_saga("tests.traced_line", {})
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    [first] = rt.dispatcher.steps()  # its message carries the start's context in its headers, not its arguments
    assert set(first.headers) == {TRACEPARENT} and TRACEPARENT not in first.kwargs
    worker.drain()

    assert get_saga(saga_id).state == "COMPLETED"
    s = named(list(exporter.get_finished_spans()))
    assert first.headers[TRACEPARENT] == format_context(s["saga start"].context)
    assert set(s) == {"saga start", "action reserve", "action charge", "action ship"}
    assert len({x.context.trace_id for x in s.values()}) == 1
    assert s["saga start"].parent is None
    assert parent_of(s["action reserve"]) == s["saga start"].context.span_id
    assert parent_of(s["action charge"]) == s["action reserve"].context.span_id
    assert parent_of(s["action ship"]) == s["action charge"].context.span_id
    assert dict(s["action charge"].attributes or {}) == {
        "saga.id": saga_id, "saga.type": "tests.traced_line", "saga.version": 1, "saga.step": "charge",
        "saga.attempt": 1, "saga.side": "action", "saga.task": "traced.b",
        "messaging.message.id": get_saga(saga_id).steps[1].task_id}
    # the run's segment is its start's span
    assert rt.store.load(saga_id).trace == format_context(s["saga start"].context)


def test_compensation_attempts_are_spans_of_the_same_trace(rt: Runtime, worker: Worker,
                                                          exporter: InMemorySpanExporter) -> None:
    saga_id = start_saga("tests.traced_line", {"fail": "ship"})
    worker.drain()

    assert get_saga(saga_id).state == "COMPENSATED"
    s = named(list(exporter.get_finished_spans()))
    assert {"compensation charge", "compensation reserve"} <= set(s)
    assert len({x.context.trace_id for x in s.values()}) == 1
    failed = s["action ship"]
    assert failed.status.status_code.name == "ERROR" and failed.events[0].name == "exception"
    assert parent_of(s["compensation charge"]) == failed.context.span_id
    assert parent_of(s["compensation reserve"]) == s["compensation charge"].context.span_id
    assert (s["compensation reserve"].attributes or {})["saga.side"] == "compensation"


def test_a_start_inside_a_traced_request_joins_its_trace(rt: Runtime, worker: Worker, provider: TracerProvider,
                                                        exporter: InMemorySpanExporter) -> None:
    with provider.get_tracer("web").start_as_current_span("POST /orders") as request:
        start_saga("tests.traced_line", {})
    worker.drain()

    s = named(list(exporter.get_finished_spans()))
    assert parent_of(s["saga start"]) == request.get_span_context().span_id
    assert {x.context.trace_id for x in s.values()} == {request.get_span_context().trace_id}


def test_a_run_parked_on_a_wait_goes_on_in_a_second_trace_linked_to_the_first(
        rt: Runtime, worker: Worker, exporter: InMemorySpanExporter) -> None:
    saga_id = start_saga("tests.traced_wait", {})
    worker.drain()
    first = named(list(exporter.get_finished_spans()))
    assert set(first) == {"saga start", "action reserve"}  # ended: nothing stays open while it waits
    exporter.clear()

    rt.clock.advance(3600 * 0.5)  # type: ignore[attr-defined]
    signal(saga_id, "approve", {}, idempotency_key="k1", who="ada")
    worker.drain()

    assert get_saga(saga_id).state == "COMPLETED"
    second = named(list(exporter.get_finished_spans()))
    assert set(second) == {"saga signal approve", "action ship"}
    resumed = second["saga signal approve"]
    assert resumed.parent is None
    assert resumed.context.trace_id != first["saga start"].context.trace_id
    assert [link.context.span_id for link in resumed.links] == [first["saga start"].context.span_id]
    assert parent_of(second["action ship"]) == resumed.context.span_id
    assert rt.store.load(saga_id).trace == format_context(resumed.context)


def test_a_long_backoff_goes_on_in_a_new_trace_linked_to_the_failed_attempt(
        rt: Runtime, worker: Worker, exporter: InMemorySpanExporter) -> None:
    saga_id = start_saga("tests.traced_line", {"backoff": "charge"})
    worker.drain()  # charge fails once: its retry waits 300 s, longer than the 60 s threshold
    [(retry, _)] = worker.waiting
    assert set(retry.headers) == {TRACE_LINK}
    before = named(list(exporter.get_finished_spans()))
    exporter.clear()

    rt.clock.advance(301)  # type: ignore[attr-defined]
    worker.drain()

    assert get_saga(saga_id).state == "COMPLETED"
    after = named(list(exporter.get_finished_spans()))
    again = after["action charge"]
    assert again.parent is None and again.context.trace_id != before["saga start"].context.trace_id
    assert [link.context.span_id for link in again.links] == [before["action charge"].context.span_id]
    assert (again.attributes or {})["saga.attempt"] == 2
    assert parent_of(after["action ship"]) == again.context.span_id


def test_a_short_backoff_stays_in_the_trace(rt: Runtime, worker: Worker, exporter: InMemorySpanExporter) -> None:
    saga_id = start_saga("tests.traced_line", {"backoff": "reserve"})  # QUICK: 0.1 s
    worker.drain()
    rt.clock.advance(1)  # type: ignore[attr-defined]
    worker.drain()

    assert get_saga(saga_id).state == "COMPLETED"
    spans = list(exporter.get_finished_spans())
    assert len({x.context.trace_id for x in spans}) == 1
    attempts = [x for x in spans if x.name == "action reserve"]
    assert [(x.attributes or {})["saga.attempt"] for x in attempts] == [1, 2]
    assert parent_of(attempts[1]) == attempts[0].context.span_id


def test_an_event_carries_the_trace_context_of_its_publisher(provider: TracerProvider) -> None:
    tracing = OtelTracing(provider.get_tracer("workflows"), park_after=60)
    plain = make_envelope("OrderPlaced", {}, saga_id="s1", saga_type="shop", source="client")
    assert "traceparent" not in plain.to_wire()  # tracing off: the wire form is as it was
    with provider.get_tracer("web").start_as_current_span("POST /orders") as span:
        env = make_envelope("OrderPlaced", {}, saga_id="s1", saga_type="shop", source="client",
                            traceparent=tracing.traceparent())
    wire = env.to_wire()
    assert parse(wire["traceparent"]) is not None
    assert parse(wire["traceparent"]).span_id == span.get_span_context().span_id  # type: ignore[union-attr]
    assert parse_envelope(wire).traceparent == wire["traceparent"]
    with pytest.raises(Exception, match="traceparent"):
        parse_envelope({**wire, "traceparent": "not-a-trace"})


NOT_IMPORTED = textwrap.dedent("""
    import importlib.abc, os, sys, uuid, tempfile, warnings
    if os.environ.get("BLOCK_OTEL"):  # the extra not installed: `import opentelemetry` fails
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, Block())
    import tests.support.traced_sagas
    from workflows.testing import Clock, Worker
    from workflows import get_saga, start_saga
    from workflows.runtime.container import Runtime, activate
    from workflows.runtime.dispatch import RecordingDispatcher
    from workflows.runtime.settings import Settings
    from workflows.store.db import migrate
    folder = tempfile.mkdtemp()
    url = f"sqlite:///{folder}/t.db"
    migrate(url)
    settings = Settings(database_url=url, data_dir=folder)
    rt = Runtime(app=None, settings=settings, clock=Clock(), ids=lambda: uuid.uuid4().hex,
                 _dispatcher=RecordingDispatcher())
    with activate(rt):
        rt._dispatcher = RecordingDispatcher(tracing=rt.tracing)
        saga_id = start_saga("tests.traced_line", {"fail": "ship"})
        Worker(rt, rt._dispatcher).drain()
        print(get_saga(saga_id).state, rt.tracing.enabled)
    print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
""")


@pytest.mark.parametrize("env, blocked", [({}, False), ({"SAGA_TRACING": "off"}, False),
                                          ({"SAGA_TRACING": "otel"}, True)])
def test_without_tracing_or_without_the_extra_nothing_of_opentelemetry_is_imported(env: dict[str, str],
                                                                                   blocked: bool) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_TRACING", "OTEL_"))}
    environ.update(env, PYTHONPATH=str(ROOT), **({"BLOCK_OTEL": "1"} if blocked else {}))
    done = subprocess.run([sys.executable, "-c", NOT_IMPORTED], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    state, modules = done.stdout.strip().splitlines()
    assert state == "COMPENSATED False"  # the run goes on as ever, untraced
    assert modules == "[]"
    if blocked:  # asked for and not installed: said once, in a warning that says what to install
        assert "pip install 'celery-sagas[otel]'" in done.stderr


def test_a_scheduled_start_goes_on_in_a_new_trace_linked_to_the_call_that_scheduled_it(
        rt: Runtime, worker: Worker, exporter: InMemorySpanExporter) -> None:
    from workflows.operations.sweeper import sweep

    saga_id = start_saga("tests.traced_line", {}, countdown=3600)
    [scheduled] = exporter.get_finished_spans()
    assert scheduled.name == "saga start" and rt.store.load(saga_id).trace == format_context(scheduled.context)
    exporter.clear()

    rt.clock.advance(3601)  # type: ignore[attr-defined]
    assert sweep(rt).started == [saga_id]
    worker.drain()

    assert get_saga(saga_id).state == "COMPLETED"
    s = named(list(exporter.get_finished_spans()))
    started = s["saga Started"]  # the sweeper's start: a new trace, linked to the call that scheduled it
    assert started.parent is None and started.context.trace_id != scheduled.context.trace_id
    assert [link.context.span_id for link in started.links] == [scheduled.context.span_id]
    assert parent_of(s["action reserve"]) == started.context.span_id
    assert {x.context.trace_id for x in s.values()} == {started.context.trace_id}


def test_a_wait_that_times_out_is_compensated_in_a_new_linked_trace(rt: Runtime, worker: Worker,
                                                                   exporter: InMemorySpanExporter) -> None:
    from workflows.operations.sweeper import sweep

    saga_id = start_saga("tests.traced_wait", {})
    worker.drain()
    first = named(list(exporter.get_finished_spans()))
    exporter.clear()

    rt.clock.advance(3601)  # type: ignore[attr-defined]
    assert sweep(rt).waits_timed_out == [f"{saga_id}:approval"]
    worker.drain()

    assert get_saga(saga_id).state == "COMPENSATED"
    s = named(list(exporter.get_finished_spans()))
    timed_out = s["saga WaitTimedOut"]
    assert timed_out.parent is None
    assert [link.context.span_id for link in timed_out.links] == [first["saga start"].context.span_id]
    assert parent_of(s["compensation reserve"]) == timed_out.context.span_id
