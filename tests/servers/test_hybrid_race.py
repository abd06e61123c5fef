"""The hybrid's timeout race with real workers: a choreographed `PaymentSettled` and the wait's
timeout arrive together, and each run is decided once.

The example shop's `order_paid_fulfillment` waits for `PaymentSettled` (tasks/sagas.py). Here the
checkout's payment service does not run: the test publishes each `PaymentSettled` itself, to the
`saga_waits` service's queue on RabbitMQ, in a thread, while the sweeper (in this process, its clock
past the waits' ten-minute timeout) times the same waits out. Real prefork workers run the
fulfilment reaction, the `saga_waits` service and the saga's steps, on a PostgreSQL database of this
module's own (the sweep acts on every run of its database, so it must not see the session's).

Whichever comes first wins, once: a run is COMPLETED (its wait approved by the event, no time-out)
or COMPENSATED (timed out, the event then refused as not waiting, its stock released), never both,
with one shipment at most and the signal recorded at most once. (Three runs of this module here:
3/3, 2/4 and 2/4 runs won by the event/the timeout: both sides of the race are taken.)
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tasks.choreography.checkout import checkout
from tasks.inventory import available
from tests.support.choreo import broker_url, client_app, effects, order, rabbitmq_workers, settle
from tests.support.databases import own_pg_database
from tests.support.interfaces import wait_until
from workflows import get_saga
from workflows.choreography import bus, use_publisher
from workflows.choreography.envelope import make_envelope
from workflows.choreography.reactions import SERVICE
from workflows.operations.sweeper import sweep
from workflows.runtime.container import Runtime, activate
from workflows.runtime.settings import Settings

RACES = 6
EVENT_SERVICES = ("fulfilment", SERVICE)  # not the checkout's payment service: the test settles


@pytest.fixture(scope="module")
def race_database() -> Iterator[str]:
    from tasks.schema import migrate

    with own_pg_database("hybrid_race") as url:
        migrate(url)
        yield url


@pytest.fixture(scope="module")
def amqp_app(app: Any) -> Any:
    return client_app("amqp")


@pytest.fixture(scope="module")
def workers(amqp_app: Any, race_database: str) -> Iterator[None]:
    with rabbitmq_workers(amqp_app, "race", EVENT_SERVICES, "inventory,shipping,notification", timeout=90,
                          SAGA_DATABASE_URL=race_database):
        yield


@pytest.fixture
def race_rt(amqp_app: Any, race_database: str, workers: None, tmp_path: Path) -> Iterator[Runtime]:
    """This process on the module's database, publishing on RabbitMQ."""
    rt = Runtime(app=amqp_app, settings=Settings(database_url=race_database, broker_url=broker_url("amqp"),
                                                 data_dir=tmp_path))
    with activate(rt), use_publisher(amqp_app):
        yield rt


def test_payment_events_racing_the_waits_timeout_decide_each_run_once(race_rt: Runtime, amqp_app: Any) -> None:
    # Given RACES orders whose sagas are parked on their payment wait
    orders = [order() for _ in range(RACES)]
    flows = {o["order_id"]: checkout.start("OrderPlaced", o, idempotency_key=f"placed-{o['order_id']}")
             for o in orders}
    for o in orders:
        wait_until(lambda o=o: race_rt.store.saga_type(o["order_id"]) is not None
                   and get_saga(o["order_id"]).step("payment_settled").status == "WAITING",
                   timeout=90, what=f"{o['order_id']} parked on its wait")

    # When each one's PaymentSettled is published while the sweeper, past the timeout, times them out
    events = [make_envelope("PaymentSettled", {"order_id": o["order_id"], "approved": True, "payment_id": 1,
                                               "amount": "25.00"},
                            saga_id=flows[o["order_id"]], saga_type="order_checkout", source="checkout_payment")
              for o in orders]
    go = threading.Barrier(2)

    def publish() -> None:
        go.wait()
        for e in events:
            bus.send(amqp_app, e.to_wire(), SERVICE)

    sender = threading.Thread(target=publish)
    sender.start()
    go.wait()
    report = sweep(race_rt, race_rt.clock() + timedelta(minutes=11))
    sender.join()

    # Then each run ends one way: approved by its event, or timed out and compensated, never both
    outcomes = {}
    for o in orders:
        view = settle(o["order_id"], timeout=90)
        types = view.event_types()
        timed_out, approved = "WaitTimedOut" in types, "WaitApproved" in types
        assert timed_out != approved, (o["order_id"], types)
        assert types.count("SignalReceived") <= 1 and types.count("WaitApproved") <= 1
        shipped = effects(o["order_id"])["shipment"]
        if approved:
            assert view.state == "COMPLETED" and len(shipped) == 1, (view.state, shipped)
        else:
            assert view.state == "COMPENSATED" and shipped == []
            assert available(o["items"][0]["sku"]) == 10  # the reservation released once
        outcomes[o["order_id"]] = "event" if approved else "timeout"
    assert report.counts()["waits_timed_out"] == list(outcomes.values()).count("timeout"), (report, outcomes)

    # And every event was handled by the waits service: answered, or refused as no longer waiting
    for o in orders:
        flow = flows[o["order_id"]]
        wait_until(lambda flow=flow: _answer(flow) is not None, timeout=60, what=f"{flow}'s PaymentSettled handled")
        answer = _answer(flow)
        assert answer is not None
        if outcomes[o["order_id"]] == "event":
            assert [a["saga_id"] for a in answer["answered"]] == [o["order_id"]], answer
        else:
            assert answer["answered"] == [] and [r["saga_id"] for r in answer["refused"]] == [o["order_id"]], answer


def _answer(flow: str) -> dict[str, Any] | None:
    """What the saga_waits service recorded for the flow's PaymentSettled, once it did."""
    for e in get_saga(flow).events:
        if e.type == "EventHandled" and e.detail.get("consumer") == SERVICE:
            return e.detail["result"]  # type: ignore[no-any-return]
    return None
