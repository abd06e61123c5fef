"""Starting a choreography through the suite's database: what an invalid first event or a second
start with the same key writes (the pure pieces are in tests/pure/test_choreography_units.py).

No worker runs here.
"""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from tasks.choreography import sequential
from tasks.common import transaction
from tests.support.choreo import order
from workflows.choreography import InvalidEvent, publish
from workflows.core.errors import IdempotencyConflict
from workflows.store.models import OutboxRow, SagaRow


# ------------------------------------------------------------------ publishing checks (database, no worker)


def sagas_with_key(key: str) -> int:
    with transaction() as s:
        return int(s.scalar(select(func.count()).select_from(SagaRow).where(SagaRow.idempotency_key == key)) or 0)


def test_an_invalid_first_event_writes_nothing(app) -> None:  # type: ignore[no-untyped-def]
    key = f"units-{uuid.uuid4().hex}"
    with pytest.raises(InvalidEvent, match="items"):
        sequential.start("OrderCreated", order(items=[]), idempotency_key=key)
    with pytest.raises(InvalidEvent, match="not an event of choreography"):
        sequential.start("OrderShipped", order(), idempotency_key=key)
    with pytest.raises(InvalidEvent, match="choreography"):
        publish("OrderCreated", order())
    assert sagas_with_key(key) == 0


def test_starting_twice_with_one_key_starts_one_saga(app) -> None:  # type: ignore[no-untyped-def]
    o = order()
    key = f"units-{uuid.uuid4().hex}"
    first = sequential.start("OrderCreated", o, idempotency_key=key)

    assert sequential.start("OrderCreated", o, idempotency_key=key) == first
    with pytest.raises(IdempotencyConflict):
        sequential.start("OrderCreated", {**o, "customer_id": "someone-else"}, idempotency_key=key)
    with transaction() as s:
        rows = s.scalars(select(OutboxRow.event_type).where(OutboxRow.saga_id == first,
                                                            OutboxRow.source == "client")).all()
        saga = s.get(SagaRow, first)
    assert rows == ["OrderCreated"] and saga is not None
    assert (saga.style, saga.saga_type, saga.input["order_id"]) == ("choreographed", "order_sequential", o["order_id"])
