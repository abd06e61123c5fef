"""The hybrid with real workers on RabbitMQ: the example shop's checkout choreography starts the
orchestrated saga `order_paid_fulfillment`, and its payment service's `PaymentSettled` answers the
saga's wait (tasks/choreography/checkout.py, tasks/sagas.py).

Two worker processes: one consumes the three event queues of the flow (`fulfilment`,
`checkout_payment`, `saga_waits`), the other the saga's step queues. Everything runs on this
session's RabbitMQ vhost, so no other worker of the suite (they consume Redis) takes a message;
the step worker starts only after the first test has seen the payment's event arrive before the
saga could reach its wait.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tasks.choreography.checkout import checkout
from tasks.inventory import available
from tests.support.choreo import (NAMESPACE, DECLINED, broker_url, client_app, envelope_of, handled, order,
                                  purge_event_queues, settle)
from tests.support.interfaces import wait_until
from tests.support.workers import WorkerProcess, worker_env
from workflows import get_saga
from workflows.choreography import bus, queue_name, use_publisher
from workflows.choreography.reactions import SERVICE

EVENT_SERVICES = ("fulfilment", "checkout_payment", SERVICE)


@pytest.fixture(scope="module")
def amqp_app(app: Any) -> Any:
    return client_app("amqp")


@pytest.fixture(scope="module")
def events_worker(amqp_app: Any) -> Iterator[WorkerProcess]:
    purge_event_queues(broker_url("amqp"), EVENT_SERVICES)  # nothing left from an earlier module or run
    w = WorkerProcess(f"{NAMESPACE}-hybrid-events", ",".join(queue_name(s) for s in EVENT_SERVICES),
                      env=worker_env(SAGA_BROKER_URL=broker_url("amqp"), SAGA_EVENT_NAMESPACE=NAMESPACE))
    try:
        w.wait_ready(amqp_app, timeout=60)
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def steps_worker(amqp_app: Any) -> Iterator[WorkerProcess]:
    w = WorkerProcess(f"{NAMESPACE}-hybrid-steps", "inventory,shipping,notification",
                      env=worker_env(SAGA_BROKER_URL=broker_url("amqp"), SAGA_EVENT_NAMESPACE=NAMESPACE))
    try:
        w.wait_ready(amqp_app, timeout=60)
        yield w
    finally:
        w.stop()


@pytest.fixture
def publishing(amqp_app: Any, events_worker: WorkerProcess) -> Iterator[Any]:
    with use_publisher(amqp_app):
        yield amqp_app


def place(o: dict[str, Any]) -> str:
    return checkout.start("OrderPlaced", o, idempotency_key=f"placed-{o['order_id']}")


def settled_saga(o: dict[str, Any]) -> Any:
    """The order's saga once the fulfilment service started it and it ended."""
    from workflows.runtime.container import get_runtime

    wait_until(lambda: get_runtime().store.saga_type(o["order_id"]), timeout=60, what="the saga's start")
    return settle(o["order_id"], timeout=60)


def test_the_payment_event_before_the_saga_reaches_its_wait_is_kept_and_consumed_when_it_begins(
        publishing: Any, request: pytest.FixtureRequest) -> None:
    # Given an order placed while no worker takes the saga's steps: the fulfilment service starts
    # the saga (its first step waits in its queue) and the payment service settles at once
    o = order()
    flow = place(o)
    settle(flow, timeout=60)  # the checkout is over: both reactions and PaymentSettled were handled
    run = get_saga(o["order_id"])
    assert run.state == "RUNNING" and run.step("reserve_inventory").status == "RUNNING"
    assert run.step("payment_settled").status == "PENDING" and "SignalKept" in run.event_types()

    # When the step worker starts
    request.getfixturevalue("steps_worker")

    # Then the wait takes the kept event as it begins, and the saga completes
    view = settle(o["order_id"], timeout=60)
    assert view.state == "COMPLETED", view.event_types()
    types = view.event_types()
    assert types.index("SignalKept") < types.index("WaitStarted") < types.index("WaitApproved")
    assert "WaitTimedOut" not in types and len(view.signals) == 1


def test_an_order_placed_starts_the_saga_and_the_payment_event_completes_it_causes_in_both_histories(
        publishing: Any, steps_worker: WorkerProcess) -> None:
    o = order()
    flow = place(o)

    view = settled_saga(o)
    flow_view = settle(flow, timeout=60)

    assert view.state == "COMPLETED" and view.saga_type == "order_paid_fulfillment"
    assert view.step("payment_settled").result["approved"] is True  # type: ignore[index]
    placed, settled = envelope_of(flow, "OrderPlaced"), envelope_of(flow, "PaymentSettled")
    started = next(e for e in view.events if e.type == "SagaStarted")
    assert started.detail["cause"] == {"choreography": "order_checkout", "saga_id": flow,
                                       "event_id": placed["eventId"], "event_type": "OrderPlaced",
                                       "service": "fulfilment"}
    assert [s.idempotency_key for s in view.signals] == [f"event-{settled['eventId']}"]
    assert flow_view.state == "COMPLETED"
    assert sorted(handled(flow)) == [("OrderPlaced", "checkout_payment"), ("OrderPlaced", "fulfilment"),
                                     ("PaymentSettled", SERVICE)]
    [reaction] = [e for e in flow_view.events if e.type == "OrchestratedSagaStarted"]
    assert reaction.detail["started_saga_id"] == o["order_id"] and reaction.detail["event_id"] == placed["eventId"]
    [answer] = [e for e in flow_view.events if e.type == "EventHandled" and e.detail["consumer"] == SERVICE]
    assert [a["saga_id"] for a in answer.detail["result"]["answered"]] == [o["order_id"]]


def test_a_declined_payment_rejects_the_wait_and_releases_the_stock(publishing: Any,
                                                                   steps_worker: WorkerProcess) -> None:
    o = order(**DECLINED)
    sku = o["items"][0]["sku"]
    place(o)

    view = settled_saga(o)

    assert view.state == "COMPENSATED" and "WaitRejected" in view.event_types()
    assert "declined" in (view.failure_reason or "")
    assert view.step("reserve_inventory").status == "COMPENSATED" and available(sku) == 10


def test_a_redelivered_payment_event_changes_nothing(publishing: Any, steps_worker: WorkerProcess) -> None:
    o = order()
    flow = place(o)
    settled_saga(o)
    settle(flow, timeout=60)

    # When the broker delivers the PaymentSettled event to saga_waits once more
    bus.send(publishing, envelope_of(flow, "PaymentSettled"), SERVICE)

    wait_until(lambda: "DuplicateEventIgnored" in get_saga(flow).event_types(), timeout=30)
    view = get_saga(o["order_id"])
    assert view.state == "COMPLETED" and len(view.signals) == 1
    assert view.event_types().count("SignalReceived") == 1 and view.event_types().count("WaitApproved") == 1
