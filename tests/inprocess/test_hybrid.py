"""The hybrid in process: a choreographed event answers an orchestrated saga's wait (`OnEvent`), and a
choreography starts an orchestrated saga as a reaction (`ctx.start_saga`), its cause in both histories.

The events go through a Celery app on kombu's filesystem broker in the test's folder (no server) and
are delivered by the consumer task's body in the order each test chooses (`tests.support.inproc_bus`);
the saga's steps by the in-process worker, on the test's clock.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from tests.support import hybrid_sagas  # noqa: F401  (declares the choreography and the saga)
from tests.support.hybrid_sagas import HYBRID
from tests.support.inproc_bus import InprocBus, filesystem_app
from workflows import OnEvent, Saga, Wait, register_saga, start_saga
from workflows.choreography import choreographies, use_publisher
from workflows.choreography.reactions import ANSWER_POLICY, SERVICE, check_on_events
from workflows.core.errors import DefinitionError
from workflows.core.state import WaitTimedOut
from workflows.core.definition import registry
from workflows.operations.sweeper import sweep
from workflows.runtime.container import Runtime
from workflows.testing import Clock, Worker


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Celery:
    return filesystem_app(tmp_path_factory.mktemp("broker"))


@pytest.fixture
def events(rt: Runtime, app: Celery) -> Iterator[InprocBus]:
    with use_publisher(app):
        yield InprocBus(rt, app)


def place(events: InprocBus, order_id: str, **payload: Any) -> str:
    return events.track(HYBRID.start("OrderPlaced", {"order_id": order_id, **payload},
                                     idempotency_key=f"placed-{order_id}"))


def parked(events: InprocBus, worker: Worker, order_id: str) -> str:
    """The order placed, its saga started by the fulfilment service and parked on its wait."""
    place(events, order_id)
    events.deliver("inproc_fulfilment")
    worker.drain()
    assert events.rt.store.get(order_id).state == "WAITING"
    return order_id


def test_the_event_is_routed_to_the_waits_service_and_its_queue_bound() -> None:
    assert HYBRID.consumers("PaymentSettled") == [SERVICE]
    assert ("inproc_hybrid", "PaymentSettled") in choreographies.routes()[SERVICE]
    assert HYBRID.consumers("OrderPlaced") == ["inproc_fulfilment", "inproc_payment"]


def test_a_choreography_starts_the_saga_and_its_event_answers_the_wait_with_the_cause_in_both_histories(
        rt: Runtime, worker: Worker, events: InprocBus) -> None:
    # Given an order placed: the fulfilment service starts the orchestrated saga under the order's id
    flow = place(events, "o-1")
    [placed] = [r.envelope for r in rt.store.outbox_of(flow)]
    events.deliver("inproc_fulfilment")
    worker.drain()
    run = rt.store.get("o-1")
    assert run.state == "WAITING" and run.step("payment").status == "WAITING"

    # When the payment service settles and its event is delivered
    events.deliver()
    worker.drain()

    # Then the wait took the event as its signal and the saga completed
    run = rt.store.get("o-1")
    assert run.state == "COMPLETED", run.event_types()
    settled = next(r.envelope for r in rt.store.outbox_of(flow) if r.event_type == "PaymentSettled")
    [sig] = run.signals
    assert sig.name == "payment_settled" and sig.idempotency_key == f"event-{settled['eventId']}"
    assert sig.consumed_by == "payment" and sig.payload == {"order_id": "o-1", "approved": True}
    # the saga's history names the event that started it, and the one that answered its wait
    started = next(e for e in run.events if e.type == "SagaStarted")
    assert started.detail["cause"] == {"choreography": "inproc_hybrid", "saga_id": flow,
                                       "event_id": placed["eventId"], "event_type": "OrderPlaced",
                                       "service": "inproc_fulfilment"}
    received = next(e for e in run.events if e.type == "SignalReceived")
    assert received.detail["idempotency_key"] == f"event-{settled['eventId']}"
    assert f"PaymentSettled of inproc_hybrid {flow}" in received.detail["who"]
    # the choreography's history names the run it started and the wait its event answered
    flow_view = rt.store.get(flow)
    [reaction] = [e for e in flow_view.events if e.type == "OrchestratedSagaStarted"]
    assert reaction.detail["started_saga_id"] == "o-1" and reaction.detail["event_id"] == placed["eventId"]
    assert reaction.detail["started_saga_type"] == "inproc.hybrid_order" and reaction.detail["new"] is True
    [answer] = [e for e in flow_view.events if e.type == "EventHandled" and e.detail["consumer"] == SERVICE]
    assert answer.detail["result"]["answered"] == [
        {"saga_id": "o-1", "signal": "payment_settled", "signal_id": sig.id, "duplicate": False, "state": "RUNNING"}]
    assert flow_view.state == "COMPLETED"


def test_an_event_before_the_run_reaches_its_wait_is_kept_and_consumed_when_the_wait_begins(
        rt: Runtime, worker: Worker, events: InprocBus) -> None:
    # Given the saga started, its first step not run yet
    place(events, "o-2")
    events.deliver("inproc_fulfilment")
    assert rt.store.get("o-2").step("payment").status == "PENDING"

    # When the payment settles first
    events.deliver()
    view = rt.store.get("o-2")
    assert "SignalKept" in view.event_types() and view.state == "RUNNING"

    # Then the wait takes it as it begins, and the saga goes on without ever parking
    worker.drain()
    view = rt.store.get("o-2")
    assert view.state == "COMPLETED"
    assert view.event_types().count("WaitApproved") == 1 and "WaitTimedOut" not in view.event_types()


def test_a_redelivered_event_is_ignored_and_one_replayed_after_a_crash_is_a_duplicate_signal(
        rt: Runtime, worker: Worker, events: InprocBus) -> None:
    parked(events, worker, "o-3")
    flow = events.sagas[-1]
    events.deliver()
    worker.drain()
    settled = next(r.envelope for r in rt.store.outbox_of(flow) if r.event_type == "PaymentSettled")

    # When the broker delivers the event again: the consumer ignores it
    assert events.redeliver(settled, SERVICE) == {"duplicate": True, "relayed": 0}
    # And when a handling died after the signal committed but before its own commit (its
    # processed row gone), the redelivery sends the same signal again: a duplicate, nothing changes
    with create_engine(rt.settings.resolved_database_url()).begin() as c:
        c.execute(text("DELETE FROM processed_events WHERE consumer = :c AND event_id = :e"),
                  {"c": SERVICE, "e": settled["eventId"]})
    again = events.redeliver(settled, SERVICE)
    assert again is None  # handled (not refused, not dead-lettered)
    worker.drain()

    view = rt.store.get("o-3")
    assert view.state == "COMPLETED" and len(view.signals) == 1
    assert view.event_types().count("SignalReceived") == 1 and view.event_types().count("WaitApproved") == 1
    results = [e.detail["result"] for e in rt.store.get(flow).events
               if e.type == "EventHandled" and e.detail["consumer"] == SERVICE]
    assert [r["answered"][0]["duplicate"] for r in results] == [False, True]
    assert "DuplicateEventIgnored" in rt.store.get(flow).event_types()


def test_a_redelivered_order_starts_the_saga_once(rt: Runtime, worker: Worker, events: InprocBus) -> None:
    flow = place(events, "o-4")
    [placed] = [r.envelope for r in rt.store.outbox_of(flow)]
    events.deliver("inproc_fulfilment")
    assert events.redeliver(placed, "inproc_fulfilment") == {"duplicate": True, "relayed": 0}
    worker.drain()
    assert rt.store.list(saga_type="inproc.hybrid_order")[1] == 1
    assert rt.store.get(flow).event_types().count("OrchestratedSagaStarted") == 1


def test_a_timeout_racing_the_event_is_decided_once_the_event_first(rt: Runtime, worker: Worker, clock: Clock,
                                                                    events: InprocBus) -> None:
    saga_id = parked(events, worker, "o-5")
    clock.advance(600 + 1)
    stale = rt.store.load(saga_id)  # the sweeper's read, before the event's signal commits
    events.deliver()
    applied = rt.loop.apply(registry.get("inproc.hybrid_order"), saga_id, WaitTimedOut("payment"),
                            by="sweeper:wait", expected_version=stale.version, state=stale)
    assert applied.transition is None and applied.stale
    worker.drain()
    view = rt.store.get(saga_id)
    assert view.state == "COMPLETED"
    assert "WaitApproved" in view.event_types() and "WaitTimedOut" not in view.event_types()


def test_a_timeout_racing_the_event_is_decided_once_the_timeout_first(rt: Runtime, worker: Worker, clock: Clock,
                                                                      events: InprocBus) -> None:
    saga_id = parked(events, worker, "o-6")
    flow = events.sagas[-1]
    sweep(rt, now=clock.advance(600 + 1))
    worker.drain()
    assert rt.store.get(saga_id).state == "COMPENSATED"

    # the late event is refused by the run (in its history) and recorded as refused by the flow
    events.deliver()
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED" and view.signals == []
    assert "WaitTimedOut" in view.event_types() and "WaitApproved" not in view.event_types()
    assert "SignalRefused" in view.event_types()
    [answer] = [e.detail["result"] for e in rt.store.get(flow).events
                if e.type == "EventHandled" and e.detail["consumer"] == SERVICE]
    assert answer["answered"] == [] and answer["refused"][0]["saga_id"] == saga_id
    assert rt.store.get(flow).state == "COMPLETED"


def test_a_declined_payment_rejects_the_wait_and_compensates(rt: Runtime, worker: Worker,
                                                            events: InprocBus) -> None:
    place(events, "o-7", approved=False)
    events.deliver("inproc_fulfilment")
    worker.drain()
    events.deliver()
    worker.drain()
    view = rt.store.get("o-7")
    assert view.state == "COMPENSATED" and "WaitRejected" in view.event_types()
    assert view.step("reserve").status == "COMPENSATED" and view.step("ship").status == "PENDING"


def test_an_event_naming_no_run_is_retried_then_recorded_as_unmatched(rt: Runtime, events: InprocBus) -> None:
    flow = place(events, "o-8")
    events.deliver("inproc_payment")  # the fulfilment service never starts a saga for o-8
    events.deliver(SERVICE, attempts=ANSWER_POLICY.max_attempts)
    history = rt.store.get(flow).events
    [answer] = [e.detail["result"] for e in history if e.type == "EventHandled" and e.detail["consumer"] == SERVICE]
    assert answer == {"answered": [], "refused": [], "unmatched": ["o-8"]}
    failed = [e for e in history if e.type == "EventAttemptFailed" and e.detail["consumer"] == SERVICE]
    assert len(failed) == ANSWER_POLICY.max_attempts - 1 and "names no run yet: o-8" in failed[0].detail["error"]


def test_an_event_before_its_run_exists_is_retried_and_answers_the_wait_once_the_run_starts(
        rt: Runtime, worker: Worker, events: InprocBus) -> None:
    # Given the payment's event handled before the fulfilment service's start committed
    flow = place(events, "o-9")
    events.deliver("inproc_payment")
    [(settled, _)] = [p for p in events.pending() if p[1] == SERVICE]
    with pytest.raises(AssertionError, match="RunNotStartedYet"):
        events.redeliver(settled, SERVICE)  # attempt 1: no run yet, a retry is asked for
    # When the run starts, and the retry comes
    events.deliver("inproc_fulfilment")
    events.redeliver(settled, SERVICE, attempt=2)
    worker.drain()
    # Then the event answered the wait: the saga completes
    view = rt.store.get("o-9")
    assert view.state == "COMPLETED" and view.event_types().count("SignalReceived") == 1
    [answer] = [e.detail["result"] for e in rt.store.get(flow).events
                if e.type == "EventHandled" and e.detail["consumer"] == SERVICE]
    assert [a["saga_id"] for a in answer["answered"]] == ["o-9"]


def test_on_event_is_checked_when_declared_and_when_installed() -> None:
    with pytest.raises(DefinitionError, match="PascalCase"):
        OnEvent("payment_settled", match="order_id")
    with pytest.raises(DefinitionError, match="match"):
        OnEvent("PaymentSettled", match="")
    with pytest.raises(DefinitionError, match="on_event must be an OnEvent"):
        Wait("w", signal="s", timeout=1, on_event="PaymentSettled")  # type: ignore[arg-type]
    assert OnEvent("X", match="order.order_id").run_ref({"order": {"order_id": 12}}) == "12"
    assert OnEvent("X", match="order_id").run_ref({"order_id": {"nested": 1}}) is None
    register_saga(Saga("inproc.nowhere", steps=[
        Wait("w", signal="s", timeout=1, on_event=OnEvent("Nowhere", match="id", choreography="no_such_flow"))]))
    with pytest.raises(DefinitionError, match="no_such_flow"):
        check_on_events({"inproc_hybrid": HYBRID.event_types()})


def test_a_reaction_that_cannot_start_its_saga_is_dead_lettered_at_once_with_the_reason(
        rt: Runtime, worker: Worker, events: InprocBus) -> None:
    # Given a run that already has the order's id, started by something else
    start_saga("inproc.hybrid_order", {"order_id": "o-9"}, saga_id="o-9", idempotency_key="by-hand-o-9")
    flow = place(events, "o-9")

    # When the fulfilment service reacts: its start is refused (the id is taken), not retried
    [refused] = events.deliver("inproc_fulfilment")

    assert refused == {"dead_lettered": refused["dead_lettered"]} and "o-9" in refused["dead_lettered"]
    view = rt.store.get(flow)
    assert view.state == "FAILED" and len(view.dead_letters) == 1
    assert "OrchestratedSagaStarted" not in view.event_types()  # rolled back with the handling
    assert rt.store.list(saga_type="inproc.hybrid_order")[1] == 1
