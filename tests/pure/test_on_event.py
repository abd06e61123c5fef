"""The pure parts of the hybrid: `OnEvent` (which event answers a wait, which key of its payload
names the run) and a start's cause, recorded by the engine in the run's first history row."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from workflows import OnEvent, Saga, Step, Wait
from workflows.core.engine import decide, new_run
from workflows.core.errors import DefinitionError
from workflows.core.shape import shape_of
from workflows.core.state import Schedule, Started

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
CAUSE = {"choreography": "order_checkout", "saga_id": "flow-1", "event_id": "e-1", "event_type": "OrderPlaced",
         "service": "fulfilment"}


def saga(on_event: OnEvent | None) -> Saga:
    return Saga("pure.paid", steps=[Step("reserve", action="svc.reserve", compensation="svc.release"),
                                    Wait("paid", signal="payment_settled", timeout=60, on_event=on_event)])


def ids() -> str:
    return "0" * 32


def test_on_event_names_its_event_type_a_payload_key_and_optionally_its_choreography() -> None:
    on = OnEvent("PaymentSettled", match="order_id")
    assert on.answers("order_checkout", "PaymentSettled") and on.answers("other_flow", "PaymentSettled")
    assert not on.answers("order_checkout", "PaymentFailed")
    only = OnEvent("PaymentSettled", match="order_id", choreography="order_checkout")
    assert only.answers("order_checkout", "PaymentSettled") and not only.answers("other_flow", "PaymentSettled")
    for bad, what in ((dict(event_type="payment_settled", match="id"), "PascalCase"),
                      (dict(event_type="PaymentSettled", match="order id"), "match"),
                      (dict(event_type="PaymentSettled", match="id", choreography="Order-Checkout"), "choreography")):
        with pytest.raises(DefinitionError, match=what):
            OnEvent(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("match, payload, ref", [
    ("order_id", {"order_id": "order-123"}, "order-123"),
    ("order_id", {"order_id": 123}, "123"),
    ("order.order_id", {"order": {"order_id": "o-1"}}, "o-1"),
    ("order_id", {}, None),
    ("order_id", {"order_id": None}, None),
    ("order_id", {"order_id": True}, None),
    ("order_id", {"order_id": ""}, None),
    ("order_id", {"order_id": "x" * 201}, None),
    ("order.order_id", {"order": "o-1"}, None),
])
def test_the_run_is_named_by_the_value_at_match(match: str, payload: dict[str, object], ref: str | None) -> None:
    assert OnEvent("PaymentSettled", match=match).run_ref(payload) == ref


def test_on_event_does_not_change_the_saga_s_shape() -> None:
    # routing, like a retry policy, may change in place: a run started before keeps its version
    assert shape_of(saga(None).steps) == shape_of(saga(OnEvent("PaymentSettled", match="order_id")).steps)


def test_a_start_s_cause_is_in_its_first_history_row_and_only_when_given() -> None:
    s = saga(None)
    caused = decide(s, new_run(s, "r1", {}, caused_by="start"), Started(CAUSE), NOW, ids)
    plain = decide(s, new_run(s, "r2", {}, caused_by="start"), Started(), NOW, ids)
    scheduled = decide(s, new_run(s, "r3", {}, caused_by="start"), Schedule(NOW + timedelta(hours=1), CAUSE), NOW, ids)

    assert caused.events[0].type == "SagaStarted" and caused.events[0].detail == {"cause": CAUSE}
    assert plain.events[0].type == "SagaStarted" and plain.events[0].detail == {}
    assert scheduled.events[0].type == "SagaScheduled" and scheduled.events[0].detail["cause"] == CAUSE
