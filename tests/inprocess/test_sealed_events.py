"""Sealed fields in choreography events and signals, in process: an event's declared fields are
sealed before it is written to the outbox, the history or the saga's row, and before it is relayed;
each handler reads them in clear and what it publishes on is sealed again; an event that answers a
wait, and a signal sent to a wait that declares `sensitive`, are recorded sealed while the step
after the wait reads them in clear; `rotate` re-seals events, history rows and signals too.

The events go through kombu's filesystem broker in the test's folder and are delivered by the
consumer task's body (`tests.support.inproc_bus`), as in tests/inprocess/test_hybrid.py.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from tests.support import sealed_events
from tests.support.inproc_bus import InprocBus, filesystem_app
from tests.support.sealed_events import SEALED, SEALED_PIN
from workflows import get_saga, start_saga
from workflows.choreography import Choreography, use_publisher
from workflows.choreography.reactions import SERVICE
from workflows.core.errors import DefinitionError, IdempotencyConflict, SignalConflict
from workflows.core.sealed import is_sealed
from workflows.operations.rotation import rotate
from workflows.operations.signals import signal
from workflows.runtime.container import Runtime
from workflows.testing import Worker

CARD = "4111111111111111"
OTHER = "5500000000000004"


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


OLD, NEW, HASH = f"old1:{key('old')}", f"new2:{key('new')}", key("hash")


@pytest.fixture
def saga_settings() -> dict[str, Any]:
    return {"field_keys": OLD, "field_hash_key": HASH, "dispatch_grace": 1.0}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Celery:
    return filesystem_app(tmp_path_factory.mktemp("broker"))


@pytest.fixture
def events(rt: Runtime, app: Celery) -> Iterator[InprocBus]:
    sealed_events.seen.clear()
    with use_publisher(app):
        yield InprocBus(rt, app)


def everything(rt: Runtime) -> str:
    """Every row of every table of the test's database, as text."""
    url = rt.settings.resolved_database_url()
    engine = create_engine(url)
    with engine.connect() as c:
        tables = [r[0] for r in c.execute(text("select name from sqlite_master where type = 'table'"))]
        return "\n".join(json.dumps([list(map(str, row)) for row in c.execute(text(f'select * from "{t}"'))])
                         for t in tables)


def under(kid: str, stored: str) -> bool:
    """Does an envelope in `stored` name key `kid`?"""
    return re.search(rf'kid\W+{kid}\b', stored) is not None


def place(events: InprocBus, order_id: str, card: str = CARD) -> str:
    return events.track(SEALED.start("CardOrderPlaced", {"order_id": order_id, "payment": {"card": card}},
                                     idempotency_key=f"placed-{order_id}"))


def test_an_events_declared_fields_are_sealed_everywhere_and_each_handler_reads_them_in_clear(
        rt: Runtime, events: InprocBus) -> None:
    flow = place(events, "o-1")
    [placed] = rt.store.outbox_of(flow)
    assert is_sealed(placed.envelope["payload"]["payment"]["card"])  # as written, as relayed
    assert is_sealed(rt.store.get(flow).input["payment"]["card"])    # the saga's first event, its input

    events.deliver()

    # the charge read the card, and what it published on (the order under `order`) is sealed again
    assert sealed_events.seen == [("charge", CARD), ("note", CARD)]
    charged = next(r.envelope for r in rt.store.outbox_of(flow) if r.event_type == "CardCharged")
    assert is_sealed(charged["payload"]["order"]["payment"]["card"]) and charged["payload"]["last4"] == "1111"
    assert rt.store.get(flow).state == "COMPLETED"
    stored = everything(rt)
    assert flow in stored and "$sealed" in stored and CARD not in stored


def test_the_same_start_again_finds_its_saga_and_another_card_is_a_conflict(rt: Runtime, events: InprocBus) -> None:
    flow = place(events, "o-2")
    assert place(events, "o-2") == flow  # the same card sealed anew (another nonce): the same saga
    with pytest.raises(IdempotencyConflict):
        place(events, "o-2", OTHER)


def test_an_event_answering_a_wait_is_recorded_sealed_as_the_event_declares_and_the_next_step_reads_it_in_clear(
        rt: Runtime, worker: Worker, events: InprocBus) -> None:
    run = start_saga("inproc.sealed_wait", {"order_id": "o-3"}, saga_id="o-3")
    worker.drain()
    assert rt.store.get(run).state == "WAITING"

    events.track(SEALED_PIN.start("PinSent", {"order_id": "o-3", "pin": "90210"}))
    events.deliver(SERVICE)
    worker.drain()

    view = get_saga(run)
    assert view.state == "COMPLETED"
    assert sealed_events.seen == [("step", "90210")]
    [sig] = view.signals
    assert is_sealed(sig.payload["pin"]) and sig.payload["order_id"] == "o-3"
    assert "90210" not in everything(rt)


def test_a_signal_to_a_wait_that_declares_sensitive_is_sealed_and_its_duplicate_still_recognised(
        rt: Runtime, worker: Worker) -> None:
    sealed_events.seen.clear()
    run = start_saga("inproc.sealed_signal", {"order_id": "o-4"}, saga_id="o-4")
    worker.drain()
    first = signal(run, "pin", {"order_id": "o-4", "pin": "4321"}, idempotency_key="pin-1", who="alice")
    again = signal(run, "pin", {"order_id": "o-4", "pin": "4321"}, idempotency_key="pin-1", who="alice")
    assert not first.duplicate and again.duplicate
    with pytest.raises(SignalConflict):
        signal(run, "pin", {"order_id": "o-4", "pin": "0000"}, idempotency_key="pin-1", who="alice")
    worker.drain()
    assert get_saga(run).state == "COMPLETED" and sealed_events.seen == [("step", "4321")]
    assert "4321" not in everything(rt)


def test_rotate_reseals_events_history_rows_and_signals(rt: Runtime, worker: Worker, events: InprocBus) -> None:
    flow = place(events, "o-5")
    events.deliver()
    run = start_saga("inproc.sealed_signal", {"order_id": "o-6"}, saga_id="o-6")
    worker.drain()
    signal(run, "pin", {"order_id": "o-6", "pin": "1111"}, who="alice")
    worker.drain()
    assert under("old1", everything(rt))

    rt.settings = rt.settings.model_copy(update={"field_keys": SecretStr(f"{NEW},{OLD}")})
    rt._sealer = None
    report = rotate(rt, batch=2)

    assert report.remaining == {} and report.events >= 2 and report.history >= 2 and report.signals == 1
    stored = everything(rt)
    assert not under("old1", stored) and under("new2", stored) and CARD not in stored
    assert rt.store.get(flow).state == "COMPLETED" and get_saga(run).state == "COMPLETED"
    assert rotate(rt).events == 0


def test_a_declaration_that_is_not_dotted_paths_is_refused() -> None:
    with pytest.raises(DefinitionError, match="dotted path"):
        Choreography("inproc_sealed_bad", completed={"Done"}, sensitive=("payment card",))
    with pytest.raises(DefinitionError, match="event type"):
        Choreography("inproc_sealed_bad2", completed={"Done"}, sensitive={"not_pascal": ("card",)})
    with pytest.raises(DefinitionError, match="tuple of dotted field paths"):
        Choreography("inproc_sealed_bad3", completed={"Done"}, sensitive="payment.card")


def test_a_consumer_without_the_key_never_runs_the_handler_and_dead_letters_the_event_naming_the_key(
        rt: Runtime, events: InprocBus) -> None:
    flow = place(events, "o-7")
    # the old key dropped too early, while the event was still queued
    rt.settings = rt.settings.model_copy(update={"field_keys": SecretStr(NEW)})
    rt._sealer = None

    [outcome] = events.deliver("inproc_sealed_pay", attempts=5)

    assert outcome is not None and "SealingError" in outcome["dead_lettered"] and "'old1'" in outcome["dead_lettered"]
    assert sealed_events.seen == []  # the handler never ran
    [dl] = rt.store.dead_letters(saga_id=flow)
    assert dl.kind == "event" and is_sealed(dl.kwargs["event"]["payload"]["payment"]["card"])  # kept sealed
    assert rt.store.get(flow).state == "FAILED"
