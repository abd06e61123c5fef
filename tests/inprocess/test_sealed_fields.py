"""Sealed (sensitive) fields in the in-process tier: the stored input and every step message hold
only envelopes, the step functions receive the clear value, idempotency keys still work, readers
are shown a mask. The real servers' version (pg_dump, Redis MONITOR, logs) is
tests/servers/test_sealed_fields.py."""
from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tests.support import sealed_steps
from tests.support.sealed_steps import CardOrder, charge, refund, typed
from workflows import Saga, Step, get_saga, register_saga, start_saga
from workflows.core.definition import Child, child_id
from workflows.core.errors import IdempotencyConflict, InvalidInput
from workflows.core.sealed import is_sealed
from workflows.interfaces import cli
from workflows.interfaces.api import create_app
from workflows.runtime.container import Runtime
from workflows.store.records import input_hash
from workflows.testing import Worker

CARD = "4111111111111111"
OTHER = "5500000000000004"

PAY = register_saga(Saga("sealed.pay", sensitive=("payment.card",), input_model=CardOrder, steps=[
    Step("charge", action=charge, compensation=refund, compensate_failure=True),
    Step("typed", action=typed, compensation=None),
]))
KID = register_saga(Saga("sealed.kid", sensitive=("payment.card",), input_model=CardOrder,
                         steps=[Step("typed", action=typed, compensation=None)]))
PARENT = register_saga(Saga("sealed.parent", sensitive=("payment.card",), input_model=CardOrder, steps=[
    Step("charge", action=charge, compensation=refund),
    Child("kid", saga="sealed.kid", input=lambda order, results: order),
]))


def order(card: str = CARD, **extra: Any) -> dict[str, Any]:
    return {"order_id": "o-1", "payment": {"card": card}, **extra}


@pytest.fixture(autouse=True)
def _clear_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    sealed_steps.seen.clear()
    # no keys in the environment (a servers session sets test keys): the embedded default's own key
    monkeypatch.delenv("SAGA_FIELD_KEYS", raising=False)
    monkeypatch.delenv("SAGA_FIELD_HASH_KEY", raising=False)


def test_the_stored_input_and_every_message_hold_an_envelope_and_the_steps_see_the_card(
        rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("sealed.pay", order())
    stored = rt.store.load(saga_id).input
    assert is_sealed(stored["payment"]["card"]) and stored["order_id"] == "o-1"
    assert stored["payment"]["card"]["kid"] == "local"  # the laptop's key, made in data_dir
    sent: list[Any] = []
    while taken := rt.dispatcher.take():  # type: ignore[attr-defined]
        sent += [[m.args, m.kwargs] for m in taken]
        for m in taken:
            worker.deliver(m)

    assert get_saga(saga_id).state == "COMPLETED"
    assert sealed_steps.seen == [("action", "charge", CARD), ("action", "typed", CARD)]
    assert len(sent) >= 1 and CARD not in json.dumps(sent) and "$sealed" in json.dumps(sent)
    view = get_saga(saga_id)
    assert [s.result for s in view.steps] == [{"last4": "1111"}, {"typed_last4": "1111"}]
    assert CARD not in json.dumps([view.input, [e.detail for e in view.events]], default=str)


def test_a_compensation_and_a_child_saga_see_the_clear_card_and_store_it_sealed(rt: Runtime, worker: Worker) -> None:
    declined = start_saga("sealed.pay", order(decline=True))
    worker.drain()
    assert get_saga(declined).state == "COMPENSATED"
    assert ("compensation", "charge", CARD) in sealed_steps.seen

    sealed_steps.seen.clear()
    parent = start_saga("sealed.parent", order(OTHER))
    worker.drain()
    kid = get_saga(child_id(parent, "kid"))
    # the child's input is the parent's, its card still sealed; its model skips the sealed field
    assert kid.state == "COMPLETED" and is_sealed(kid.input["payment"]["card"])
    assert sealed_steps.seen == [("action", "charge", OTHER), ("action", "typed", OTHER)]


def test_an_idempotency_key_binds_the_clear_card_by_its_keyed_hash(rt: Runtime, worker: Worker) -> None:
    first = start_saga("sealed.pay", order(), idempotency_key="order-1")
    # sealed again (another nonce): the same card is the same input
    assert start_saga("sealed.pay", order(), idempotency_key="order-1") == first
    with pytest.raises(IdempotencyConflict):
        start_saga("sealed.pay", order(OTHER), idempotency_key="order-1")
    stored = rt.store.load(first).input
    # the hash is of the envelope's keyed mac, not a plain hash of the card
    assert input_hash("sealed.pay", stored) != input_hash("sealed.pay", order())
    assert stored["payment"]["card"]["mac"] not in json.dumps(order())


def test_a_bad_card_is_refused_in_clear_at_the_door(rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match="payment.card"):
        start_saga("sealed.pay", order("12ab"))


def test_the_api_and_the_cli_show_a_mask(rt: Runtime, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    saga_id = start_saga("sealed.pay", order())
    worker.drain()
    client = TestClient(create_app(rt.settings, runtime=rt))
    for path in (f"/api/sagas/{saga_id}", f"/api/sagas/{saga_id}/status", "/api/sagas"):
        body = client.get(path).text
        assert client.get(path).status_code == 200 and CARD not in body and '"ct"' not in body
    shown = client.get(f"/api/sagas/{saga_id}").json()
    assert shown["input"]["payment"]["card"] == "•••• sealed (local)"

    monkeypatch.setattr(cli, "_runtime", lambda: rt)
    for args in (["status", saga_id, "--json"], ["status", saga_id]):
        out = CliRunner().invoke(cli.main, args)
        assert out.exit_code == 0, out.output
        assert CARD not in out.output and '"ct"' not in out.output
    assert "sealed (local)" in CliRunner().invoke(cli.main, ["status", saga_id, "--json"]).output
