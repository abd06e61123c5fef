"""Traces in real prefork workers on two queues, exported over OTLP/HTTP to a receiver this test
runs (a small HTTP server decoding OTLP's protobuf), with and without Celery's own OpenTelemetry
instrumentation loaded in the workers.

Given a saga whose steps alternate between the queues `traced_a` and `traced_b` (one worker each),
when it runs, then its spans from the test process (its start) and from both workers form one
trace, each attempt under the one that dispatched it and the service's own span under its step;
given a saga parked on a wait, when a signal comes, then it goes on in a second trace linked to
the first, and no span is open across the park.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otel extra (make install installs it)")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

import tests.support.traced_sagas  # noqa: E402,F401  (registers the sagas in this process too)
from tests.support.workers import WorkerProcess, worker_env  # noqa: E402
from tests.support.interfaces import wait_until  # noqa: E402
from tests.support.otlp import Receiver, all_named, ancestors, one, receiving, traced_process  # noqa: E402
from workflows import get_saga, start_saga  # noqa: E402
from workflows.operations.signals import signal  # noqa: E402


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


@pytest.fixture(scope="module", params=["plain", "celery-instrumented"])
def workers(request: pytest.FixtureRequest, app, receiver: Receiver) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Two prefork workers, one a queue, tracing on, exporting to `receiver`."""
    modules = "tests.support.traced_sagas" + (",tests.support.celery_otel" if request.param != "plain" else "")
    started = []
    try:
        for name, queue in (("traced-a", "traced_a"), ("traced-b", "traced_b")):
            env = worker_env(SAGA_TRACING="otel", SAGA_EXTRA_MODULES=modules, OTEL_SERVICE_NAME=f"worker-{queue}",
                             OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="50",
                             OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
            w = WorkerProcess(f"{name}-{request.param}", queue, concurrency=2, env=env)
            started.append(w)
        for w in started:
            w.wait_ready(app)
        yield request.param
    finally:
        for w in started:
            w.stop()


@pytest.fixture
def traced_client(receiver: Receiver) -> Iterator[TracerProvider]:
    with traced_process(receiver) as provider:
        yield provider


def test_one_sagas_spans_from_both_workers_form_one_trace(workers: str, receiver: Receiver,
                                                          traced_client: TracerProvider) -> None:
    saga_id = start_saga("tests.traced_line", {})
    wait_until(lambda: get_saga(saga_id).terminal, timeout=30, what="the saga to finish")
    assert get_saga(saga_id).state == "COMPLETED"
    names = ["saga start", "action reserve", "action charge", "action ship"]
    spans = wait_until(lambda: all_named(receiver, saga_id, names), timeout=20, what="the spans")
    # from the web process and from both workers, one trace
    assert [spans[n]["service"] for n in names] == ["web", "worker-traced_a", "worker-traced_b", "worker-traced_a"]
    trace_id = spans["saga start"]["trace_id"]
    assert {s["trace_id"] for s in spans.values()} == {trace_id}
    everything = receiver.trace(trace_id)
    # each attempt under the one that dispatched it (with Celery's instrumentation, its spans between)
    for earlier, later in zip(names, names[1:]):
        assert spans[earlier]["span_id"] in ancestors(spans[later], everything), (earlier, later, workers)
    if workers == "plain":
        for earlier, later in zip(names, names[1:]):
            assert spans[later]["parent"] == spans[earlier]["span_id"]
    else:  # Celery's own spans are there, in the same trace
        assert any(s["name"].startswith("run/traced.") for s in everything)
    # the service's own span inside a step joins the saga's trace, under its step
    service = wait_until(lambda: [s for s in receiver.trace(trace_id) if s["name"] == "service action charge"],
                         timeout=10, what="the service's span")
    assert service[0]["parent"] == spans["action charge"]["span_id"]
    assert spans["action charge"]["attributes"] == {
        "saga.id": saga_id, "saga.type": "tests.traced_line", "saga.version": 1, "saga.step": "charge",
        "saga.attempt": 1, "saga.side": "action", "saga.task": "traced.b",
        "messaging.message.id": get_saga(saga_id).steps[1].task_id}


def test_a_saga_parked_on_a_signal_yields_two_linked_traces_and_no_span_across_the_park(
        workers: str, receiver: Receiver, traced_client: TracerProvider) -> None:
    saga_id = start_saga("tests.traced_wait", {})
    wait_until(lambda: get_saga(saga_id).state == "WAITING", timeout=30, what="the saga to park")
    first = wait_until(lambda: [s for s in receiver.of(**{"saga.id": saga_id}) if s["name"] == "action reserve"],
                       timeout=20, what="the first segment's spans")
    parked_at = max(s["end"] for s in receiver.trace(first[0]["trace_id"]))

    signal(saga_id, "approve", {}, idempotency_key=f"{saga_id}-go", who="ada")
    wait_until(lambda: get_saga(saga_id).terminal, timeout=30, what="the saga to finish")
    ship = wait_until(lambda: [s for s in receiver.of(**{"saga.id": saga_id}) if s["name"] == "action ship"],
                      timeout=20, what="the second segment's spans")[0]

    start = one(receiver, saga_id, "saga start")
    resumed = one(receiver, saga_id, "saga signal approve")
    assert start["trace_id"] == first[0]["trace_id"] != resumed["trace_id"] == ship["trace_id"]
    assert resumed["parent"] is None
    assert resumed["span_id"] in ancestors(ship, receiver.trace(resumed["trace_id"]))
    assert resumed["links"] == [(start["trace_id"], start["span_id"])]
    # nothing of the first trace is open across the park, nothing of the second began before it
    assert all(s["end"] <= parked_at for s in receiver.trace(start["trace_id"]))
    assert all(s["start"] >= parked_at for s in receiver.trace(resumed["trace_id"]))
