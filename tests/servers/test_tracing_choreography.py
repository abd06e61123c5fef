"""Traces of a choreographed saga: each event carries the W3C trace context of the span that
published it (in its envelope), and each service's handling of it is a span under that context,
in real prefork service workers (one pool per service, Redis) exporting over OTLP/HTTP to a
receiver this test runs. The saga is started inside a traced web request: everything joins its trace.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otel extra (make install installs it)")


from tests.support.choreo import POOLS, envelope_of, order, settle  # noqa: E402
from tests.support.interfaces import wait_until  # noqa: E402
from tests.support.otlp import Receiver, ancestors, receiving, traced_process  # noqa: E402
from tests.support.workers import WorkerProcess, worker_env  # noqa: E402
from tasks.choreography import sequential  # noqa: E402
from workflows.choreography import queue_name, use_publisher  # noqa: E402
from workflows.runtime.otel import parse  # noqa: E402

NAMESPACE = f"test_traced_{uuid.uuid4().hex[:8]}"
"""Queues of their own: a cluster of untraced service workers may be up in the same session."""


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


@pytest.fixture(scope="module")
def services(app, receiver: Receiver) -> Iterator[None]:  # type: ignore[no-untyped-def]
    saved = os.environ.get("SAGA_EVENT_NAMESPACE")
    os.environ["SAGA_EVENT_NAMESPACE"] = NAMESPACE  # read on every publish
    pools = []
    try:
        for pool, (names, concurrency) in POOLS.items():
            env = worker_env(SAGA_EVENT_NAMESPACE=NAMESPACE, SAGA_TRACING="otel", OTEL_SERVICE_NAME=pool,
                             OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="50")
            pools.append(WorkerProcess(f"{NAMESPACE}-{pool}", ",".join(queue_name(s) for s in names),
                                       concurrency=concurrency, env=env))
        for w in pools:
            w.wait_ready(app, timeout=60)
        with use_publisher(app):
            yield
    finally:
        for w in pools:
            w.stop()
        if saved is None:
            os.environ.pop("SAGA_EVENT_NAMESPACE", None)
        else:
            os.environ["SAGA_EVENT_NAMESPACE"] = saved


def test_a_choreographed_sagas_events_carry_the_trace_context(services: None, receiver: Receiver) -> None:
    with traced_process(receiver) as provider:
        with provider.get_tracer("web").start_as_current_span("POST /orders") as request:
            saga_id = sequential.start("OrderCreated", order())
    view = settle(saga_id)
    assert view.state == "COMPLETED"
    trace_id = f"{request.get_span_context().trace_id:032x}"

    # the first event carries the request's context; every later one a context of the same trace
    first = parse(envelope_of(saga_id, "OrderCreated")["traceparent"])
    assert first is not None and first.span_id == request.get_span_context().span_id
    for event in ("ReserveInventory", "InventoryReserved", "ProcessPayment", "ShipmentCreated"):
        ctx = parse(envelope_of(saga_id, event)["traceparent"])
        assert ctx is not None and f"{ctx.trace_id:032x}" == trace_id, event

    # each handling is a span in the request's trace, in the service's own worker, under the
    # handling that published its event
    handled = [("OrderCreated", "orders"), ("ReserveInventory", "inventory"), ("InventoryReserved", "orders"),
               ("ProcessPayment", "payment"), ("PaymentProcessed", "orders"), ("CreateShipment", "shipping"),
               ("ShipmentCreated", "orders")]
    names = [f"event {e} {s}" for e, s in handled]
    spans = wait_until(lambda: (got := {x["name"]: x for x in receiver.of(**{"saga.id": saga_id})})
                       and all(n in got for n in names) and got, timeout=20, what="the event spans")
    assert {spans[n]["trace_id"] for n in names} == {trace_id}
    assert spans["event ProcessPayment payment"]["service"] == "payment"
    assert spans["event ReserveInventory inventory"]["service"] == "inventory"
    everything = receiver.trace(trace_id)
    for earlier, later in zip(names, names[1:]):
        assert spans[earlier]["span_id"] in ancestors(spans[later], everything), (earlier, later)
    assert spans[names[0]]["parent"] == f"{request.get_span_context().span_id:016x}"
