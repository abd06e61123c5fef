"""Delivery guarantees of the event bus, on Redis and on RabbitMQ, with real worker processes.

Duplicates change nothing; a worker killed between its commit and its publish loses no event;
a malformed or foreign message is dead-lettered with its reason while the consumer goes on; a
handler that runs out of retries is dead-lettered and redriven once; a saga that stops hearing
events is reported stuck.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from tests.support.choreo import (NAMESPACE, effects, envelope_of, handled, history, order, outbox, published,
                            settle, wait_until)
from tasks.choreography import parallel, sequential
from tasks.common import arm_fault, transaction
from workflows import get_runtime, get_saga
from workflows.choreography import bus
from workflows.choreography.consumer import FAULT_VARIABLE
from workflows.interfaces.metrics import SagaCollector
from workflows.choreography.operations import OUTBOX_GRACE, stuck_sagas, sweep_choreographies
from workflows.operations.dead_letters import discard, redrive
from workflows.core.errors import InvalidOperation
from workflows.store.models import ProcessedEventRow
from workflows.operations.sweeper import sweep



def processed(consumer: str, event_id: str) -> int:
    with transaction() as s:
        return int(s.scalar(select(func.count()).select_from(ProcessedEventRow).where(
            ProcessedEventRow.consumer == consumer, ProcessedEventRow.event_id == event_id)) or 0)


def count(saga_id: str, type_: str, step: str | None = None) -> int:
    return sum(1 for t, s, _ in history(saga_id) if t == type_ and (step is None or s == step))


def open_event_letters(saga_id: str):  # type: ignore[no-untyped-def]
    return [d for d in get_runtime().store.dead_letters(status="OPEN", saga_id=saga_id) if d.kind == "event"]


def sweep_later(seconds: float = OUTBOX_GRACE + 1) -> list[str]:
    """What the sweeper does on its next beat, `seconds` from now."""
    return sweep_choreographies(get_runtime(), datetime.now(timezone.utc) + timedelta(seconds=seconds))


# ------------------------------------------------------------------ duplicates


def test_a_duplicated_event_changes_nothing(cluster):  # type: ignore[no-untyped-def]
    view = settle(sequential.start("OrderCreated", order()))
    before = (effects(view.id), handled(view.id), published(view.id), view.state)
    event = envelope_of(view.id, "ProcessPayment")

    for _ in range(3):  # three more copies; the payment pool takes two at a time
        bus.send(cluster.app, event, "payment")
    wait_until(lambda: count(view.id, "DuplicateEventIgnored", "ProcessPayment") == 3, what="duplicates seen")

    after = get_saga(view.id)
    assert (effects(view.id), handled(view.id), published(view.id), after.state) == before
    assert processed("payment", event["eventId"]) == 1


def test_copies_delivered_at_once_run_the_effect_once(cluster):  # type: ignore[no-untyped-def]
    saga_id = parallel.start("OrderCreated", order())
    first = envelope_of(saga_id, "OrderCreated")
    for _ in range(2):  # racing the original delivery in payment's two pool processes
        bus.send(cluster.app, first, "payment")

    view = settle(saga_id)
    wait_until(lambda: count(saga_id, "DuplicateEventIgnored", "OrderCreated") == 2, what="duplicates seen")

    assert view.state == "COMPLETED"
    assert effects(saga_id)["payment"] == ["CHARGED"]
    assert handled(saga_id).count(("OrderCreated", "payment")) == 1
    assert published(saga_id).count("PaymentProcessed") == 1 and published(saga_id).count("OrderCompleted") == 1


# ------------------------------------------------------------------ crash between commit and publish


def unsent_metric() -> float:
    """The `saga_outbox_unsent` gauge, as a scrape reads it."""
    families = {m.name: m for m in SagaCollector(lambda: get_runtime().store).collect()}
    return families["saga_outbox_unsent"].samples[0].value


def test_worker_killed_between_commit_and_publish_loses_no_event(cluster):  # type: ignore[no-untyped-def]
    doomed = cluster.restart("payment", **{FAULT_VARIABLE: "payment:ProcessPayment:worker"})
    unsent_before = unsent_metric()
    try:
        saga_id = sequential.start("OrderCreated", order())
        doomed.proc.wait(30)  # the whole payment worker died right after its commit

        # Then: the charge and its event committed together, and the event was never sent
        # (the metric operators watch counts it).
        assert effects(saga_id)["payment"] == ["CHARGED"]
        assert ("PaymentProcessed", "payment", False) in outbox(saga_id)
        assert get_saga(saga_id).state == "RUNNING"
        assert unsent_metric() == unsent_before + 1
    finally:
        cluster.restart("payment")

    # When the sweeper's relay runs (on Redis nothing else would send it for an hour; on RabbitMQ
    # the redelivered message may relay it first, and duplicates are harmless)
    sweep_later()
    view = settle(saga_id)
    assert unsent_metric() == 0

    assert view.state == "COMPLETED"
    assert effects(saga_id) == {"reservation": ["RESERVED"], "payment": ["CHARGED"], "shipment": ["CREATED"],
                                "notification": []}
    assert published(saga_id).count("PaymentProcessed") == 1
    assert handled(saga_id).count(("PaymentProcessed", "orders")) == 1
    assert processed("payment", envelope_of(saga_id, "ProcessPayment")["eventId"]) == 1
    assert all(sent for _, _, sent in outbox(saga_id))


def test_pool_process_killed_after_commit_is_redelivered_and_relays_what_it_left(cluster):  # type: ignore[no-untyped-def]
    cluster.restart("payment", **{FAULT_VARIABLE: "payment:ProcessPayment"})
    try:
        view = settle(sequential.start("OrderCreated", order()))
    finally:
        cluster.restart("payment")

    # The pool process exited after its commit; Celery requeued the message (reject on worker
    # lost); the next delivery found the event processed and sent what the first one left.
    assert view.state == "COMPLETED"
    assert count(view.id, "DuplicateEventIgnored", "ProcessPayment") >= 1
    assert effects(view.id)["payment"] == ["CHARGED"]
    assert published(view.id).count("PaymentProcessed") == 1


# ------------------------------------------------------------------ refused messages


def test_malformed_event_is_dead_lettered_with_its_reason_and_the_consumer_goes_on(cluster):  # type: ignore[no-untyped-def]
    view = settle(sequential.start("OrderCreated", order()))
    bad = {**envelope_of(view.id, "ProcessPayment"), "eventId": str(uuid.uuid4()), "schemaVersion": 99}

    bus.send(cluster.app, bad, "payment")
    wait_until(lambda: open_event_letters(view.id), what="dead letter")

    dl = open_event_letters(view.id)[0]
    assert dl.task_name == "events.payment" and dl.queue == f"{NAMESPACE}.payment"
    assert dl.exception.startswith("MalformedEvent") and "schemaVersion 99 is not supported" in dl.exception
    assert dl.kwargs["event"] == bad
    assert dl.id in cluster.dead_letter_ids()
    assert get_saga(view.id).state == "FAILED"  # a person must look at it
    assert settle(sequential.start("OrderCreated", order())).state == "COMPLETED"  # the consumer lives on

    with pytest.raises(InvalidOperation, match="malformed"):
        redrive(dl.id)
    discard(dl.id, reason="test: a broken producer")
    sweep_later(0)
    assert get_saga(view.id).state == "COMPLETED"
    assert effects(view.id)["payment"] == ["CHARGED"]


def test_a_message_that_is_not_a_task_is_dead_lettered_not_dropped(cluster):  # type: ignore[no-untyped-def]
    view = settle(parallel.start("OrderCreated", order()))
    raw = {**envelope_of(view.id, "OrderCreated"), "eventId": str(uuid.uuid4())}
    key = bus.routing_key("order_parallel", "OrderCreated", "payment")

    with cluster.app.connection_for_write() as conn, conn.Producer() as producer:
        producer.publish(json.dumps(raw), exchange=bus.exchange(), routing_key=key, content_type="application/json",
                         content_encoding="utf-8", declare=[bus.delivery_queue("payment", key)])
    wait_until(lambda: open_event_letters(view.id), what="dead letter")

    dl = open_event_letters(view.id)[0]
    assert dl.exception.startswith("RefusedMessage: not a Celery task message")
    assert dl.kwargs["event"]["eventId"] == raw["eventId"] and dl.headers["consumer"] == "payment"
    assert count(view.id, "EventRejected") == 1 and get_saga(view.id).state == "FAILED"
    assert effects(view.id)["payment"] == ["CHARGED"]  # nothing ran twice
    discard(dl.id, reason="test: a hand-made message")
    sweep_later(0)
    assert get_saga(view.id).state == "COMPLETED"


# ------------------------------------------------------------------ retries exhausted, redrive


def test_exhausted_handler_is_dead_lettered_then_redriven_once(cluster):  # type: ignore[no-untyped-def]
    arm_fault("shipping", times=4, permanent=False, message="carrier down")  # as many as its 4 attempts

    view = settle(sequential.start("OrderCreated", order()), timeout=40)

    assert view.state == "FAILED" and "carrier down" in (view.failure_reason or "")
    failed = [e for e in view.events if e.type == "EventAttemptFailed"]
    assert [e.attempt for e in failed] == [1, 2, 3, 4] and failed[-1].detail["retry_in"] is None
    [dl] = [d for d in view.dead_letters if d.kind == "event"]
    assert (dl.step, dl.attempts, dl.task_name, dl.headers["consumer"]) == ("CreateShipment", 4, "events.shipping",
                                                                             "shipping")
    assert dl.id in cluster.dead_letter_ids()
    assert effects(view.id)["shipment"] == [] and "ShipmentCreated" not in published(view.id)

    redrive(dl.id, who="test", reason="carrier is back")
    view = settle(view.id, states=("COMPLETED",))
    with pytest.raises(InvalidOperation):
        redrive(dl.id)

    assert effects(view.id)["shipment"] == ["CREATED"]
    assert handled(view.id).count(("CreateShipment", "shipping")) == 1
    assert count(view.id, "EventRedriven", "CreateShipment") == 1
    assert [e for e in view.event_types() if e.startswith("Saga")] == ["SagaCreated", "SagaFailed", "SagaResumed",
                                                                       "SagaCompleted"]


# ------------------------------------------------------------------ stuck


def test_a_delivery_waiting_for_its_retry_is_not_taken_for_a_lost_one(cluster):  # type: ignore[no-untyped-def]
    from workflows.choreography.consumer import _note
    from workflows.choreography.envelope import parse_envelope

    cluster.workers["shipping"].stop()
    try:
        saga_id = sequential.start("OrderCreated", order())
        wait_until(lambda: "CreateShipment" in published(saga_id), what="CreateShipment published")
        # Given shipping's handler failed and its retry waits three times the saga's deadline
        wait, now = 3 * sequential.deadline, datetime.now(timezone.utc)
        event = parse_envelope(envelope_of(saga_id, "CreateShipment"))
        _note(get_runtime(), event, "EventAttemptFailed", 1, waiting=(sequential, wait), consumer="shipping",
              error="TransientServiceError: carrier busy", retry_in=wait)

        # Then until the retry is due (and a deadline more) the saga is not stuck, and the sweeper
        # sends no second copy of the delivery
        soon = now + timedelta(seconds=sequential.deadline + 1)
        assert saga_id not in stuck_sagas(now=soon)
        assert saga_id not in sweep_choreographies(get_runtime(), soon)
        assert count(saga_id, "DeliveryResent", "CreateShipment") == 0
        assert saga_id in stuck_sagas(now=now + timedelta(seconds=wait + sequential.deadline + 1))
    finally:
        cluster.restart("shipping")
    assert settle(saga_id).state == "COMPLETED"


def test_a_saga_that_hears_no_event_before_its_deadline_is_reported_and_its_lost_delivery_sent_again(cluster):  # type: ignore[no-untyped-def]
    cluster.workers["shipping"].stop()
    try:
        saga_id = sequential.start("OrderCreated", order())
        wait_until(lambda: "CreateShipment" in published(saga_id), what="CreateShipment published")
        cluster.purge("shipping")  # the message is lost on its way (as a Redis BRPOP to a dying worker can)
    finally:
        cluster.restart("shipping")
    later = datetime.now(timezone.utc) + timedelta(seconds=sequential.deadline + 1)

    # Then nothing moves, and the saga is reported once its deadline passed
    assert get_saga(saga_id).state == "RUNNING" and ("CreateShipment", "shipping") not in handled(saga_id)
    assert saga_id not in stuck_sagas()
    assert saga_id in stuck_sagas(now=later)
    assert saga_id in SagaCollector(lambda: get_runtime().store).stuck_ids(later)  # and in sagas_stuck
    # When the sweeper (`saga.sweep` on celery beat) sees it, it sends the delivery that never
    # arrived again, once per deadline
    assert saga_id in sweep(get_runtime(), later).stuck
    assert count(saga_id, "DeliveryResent", "CreateShipment") == 1
    assert saga_id not in stuck_sagas(now=later)

    view = settle(saga_id)
    assert view.state == "COMPLETED"
    assert effects(saga_id)["shipment"] == ["CREATED"]
    assert handled(saga_id).count(("CreateShipment", "shipping")) == 1
