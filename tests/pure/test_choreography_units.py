"""The choreography's pieces one by one: envelope, declaration, derived state, publishing checks.

No worker, no database: the publishing checks (the suite's database) are in
tests/servers/test_choreography_start.py.
"""
from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from tasks.choreography import parallel
from workflows.choreography import (Choreography, InvalidEvent, MalformedEvent, Published, derive, make_envelope,
                                    parse_envelope)
from workflows.choreography.history import Letter, Row
from workflows.core.errors import DefinitionError
from workflows.core.state import RunStatus


def wire(**changes):  # type: ignore[no-untyped-def]
    env = make_envelope("OrderCreated", {"order_id": "o-1"}, saga_id="s-1", saga_type="order_parallel",
                        source="client").to_wire()
    env.update(changes)
    return env


# ------------------------------------------------------------------ envelope


def test_envelope_round_trips_in_wire_form() -> None:
    env = wire()
    assert set(env) == {"eventId", "eventType", "sagaId", "sagaType", "timestamp", "causationId", "schemaVersion",
                        "source", "payload"}
    parsed = parse_envelope(env)
    assert parsed.event_type == "OrderCreated" and parsed.payload == {"order_id": "o-1"}
    assert parsed.to_wire() == env


@pytest.mark.parametrize("change, reason", [
    ({"sagaId": None}, "sagaId"),
    ({"schemaVersion": 2}, "schemaVersion 2 is not supported"),
    ({"timestamp": "2026-01-01T10:00:00"}, "timestamp"),
    ({"eventType": "order.created"}, "eventType"),
    ({"payload": [1, 2]}, "payload"),
    ({"surprise": 1}, "surprise"),
])
def test_a_malformed_envelope_is_refused_with_the_reason(change, reason) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in wire(**change).items() if v is not None or k == "causationId"}
    with pytest.raises(MalformedEvent, match=reason):
        parse_envelope(env)
    with pytest.raises(MalformedEvent, match="JSON object"):
        parse_envelope("not an event")


def test_an_event_that_is_not_json_cannot_be_made() -> None:
    with pytest.raises(InvalidEvent, match="JSON"):
        make_envelope("OrderCreated", {"when": datetime.now()}, saga_id="s", saga_type="x", source="client")
    with pytest.raises(InvalidEvent, match="dict"):
        make_envelope("OrderCreated", ["no"], saga_id="s", saga_type="x", source="client")  # type: ignore[arg-type]


def test_published_can_be_awaited_in_an_async_handler() -> None:
    p = Published("e", "OrderCreated", "s")

    async def handler() -> Published:
        return await p

    assert asyncio.run(handler()) is p


# ------------------------------------------------------------------ declaration


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "Bad.Name", "completed": {"Done"}}, "lower_snake_case"),
    ({"name": "units_no_end"}, "complete it"),
    ({"name": "units_overlap", "completed": {"Done"}, "compensating": {"Done"}}, "cannot be both"),
    ({"name": "units_bad_type", "completed": {"done"}}, "PascalCase"),
    ({"name": "units_deadline", "completed": {"Done"}, "deadline": 0}, "deadline"),
])
def test_a_bad_declaration_says_what_to_change(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    kwargs.setdefault("completed", ())
    with pytest.raises(DefinitionError, match=message):
        Choreography(**kwargs)


def test_a_service_handles_an_event_type_once() -> None:
    ch = Choreography("units_once", completed={"Done"})
    svc = ch.service("svc")

    @svc.subscribe("Started")
    def first(ctx, event):  # type: ignore[no-untyped-def]
        return None

    def second(ctx, event):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(DefinitionError, match="once"):
        svc.subscribe("Started", second)
    with pytest.raises(DefinitionError, match=r"\(ctx, event\)"):
        svc.subscribe("Other", lambda ctx: None)
    assert ch.consumers("Started") == ["svc"] and ch.consumers("Done") == []


# ------------------------------------------------------------------ derived state


def published(event_id: str, type_: str, *consumers: str, reason: str | None = None) -> Row:
    payload = {"reason": reason} if reason else {}
    return Row("EventPublished", type_, {"event_id": event_id, "consumers": list(consumers), "payload": payload})


def handled_by(event_id: str, consumer: str) -> Row:
    return Row("EventHandled", None, {"event_id": event_id, "consumer": consumer})


CH = parallel


def test_state_is_running_until_the_completion_event_and_every_delivery_are_done() -> None:
    rows = [published("1", "OrderCreated", "inventory", "payment"), handled_by("1", "inventory")]
    assert derive(CH, rows).status == RunStatus.RUNNING
    rows += [handled_by("1", "payment"), published("2", "OrderCompleted", "notification")]
    assert derive(CH, rows).status == RunStatus.RUNNING  # the confirmation is still to be sent
    assert derive(CH, rows + [handled_by("2", "notification")]).status == RunStatus.COMPLETED


def test_state_compensates_until_the_compensated_event_once_nothing_is_pending() -> None:
    rows = [published("1", "OrderCreated", "inventory", "payment"), handled_by("1", "inventory"),
            published("2", "InventoryReservationFailed", "payment", reason="sold out"), handled_by("1", "payment")]
    d = derive(CH, rows)
    assert (d.status, d.reason, d.pending) == (RunStatus.COMPENSATING, "InventoryReservationFailed: sold out",
                                               (("2", "payment"),))
    rows += [handled_by("2", "payment"), published("3", "PaymentRefunded", "orders"), handled_by("3", "orders")]
    assert derive(CH, rows).status == RunStatus.COMPENSATING  # quiet, but OrderCancelled not published yet
    rows += [published("4", "OrderCancelled")]
    assert derive(CH, rows).status == RunStatus.COMPENSATED


def test_an_open_dead_letter_fails_the_saga_and_a_discarded_one_settles_its_delivery() -> None:
    rows = [published("1", "OrderCreated", "inventory", "payment"), handled_by("1", "inventory"),
            published("2", "InventoryReserved", "orders"), handled_by("2", "orders"),
            published("3", "OrderCompleted", "notification"), handled_by("3", "notification")]
    letter = Letter("OPEN", "1", "payment", "TransientServiceError: down")
    assert derive(CH, rows, [letter]).status == RunStatus.FAILED
    assert derive(CH, rows, [Letter("REDRIVEN", "1", "payment", "")]).status == RunStatus.RUNNING
    assert derive(CH, rows, [Letter("DISCARDED", "1", "payment", "")]).status == RunStatus.COMPLETED
