"""Typed steps (issue 28, item 3): a step's input and result as pydantic models, checked at the
door and at the step's report, with errors that name the field; the schemas served by the API.

The in-process tier (the test kit, `workflows.testing`): SQLite, the real decision loop, a recording
dispatcher and the test's clock; the API runs on it in-process. The same step path runs on real
workers in the other test files (a typed function is called by the same `run_function`).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tests.support import typed_sagas as typed
from workflows.testing import Clock, Worker
from workflows import InvalidInput, Saga, Step, StepContext, start_saga, step_task
from workflows.core.errors import DefinitionError
from workflows.interfaces.api import create_app
from workflows.runtime.container import Runtime
from workflows.runtime.settings import Settings

TOKEN = "typed-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORDER = {"order_id": "o-1", "total": 40}


@pytest.fixture(autouse=True)
def _fresh_record() -> Iterator[None]:
    """What the typed step functions received (`tests.support.typed_sagas`) starts empty."""
    typed.received.clear()
    yield


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=rt.settings.database_url, api_token=TOKEN), runtime=rt),
                    headers=AUTH) as c:
        yield c


def settle(worker: Worker, clock: Clock) -> None:
    for _ in range(4):
        worker.drain()
        clock.advance(10)


# ------------------------------------------------------------------ the step path


def test_a_typed_step_receives_its_model_and_its_compensation_the_typed_result(rt: Runtime, worker: Worker,
                                                                               clock: Clock) -> None:
    # Given a saga whose charge step is typed (Order in, Charged out) and whose untyped ship step fails for good
    saga_id = start_saga("typed.order", {**ORDER, "fail_ship": True})

    # When it runs
    settle(worker, clock)

    # Then charge got an Order, its result is recorded as JSON, and its compensation got the Charged it returned
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED"
    kinds = [(name, type(value).__name__) for name, value in typed.received]
    assert kinds == [("charge", "Order"), ("ship", "dict"), ("refund", "Charged")]
    assert typed.received[0][1] == typed.Order(order_id="o-1", total=40)
    assert view.step("charge").result == {"charge_id": "ch-o-1", "amount": 40}
    assert typed.received[2][1] == typed.Charged(charge_id="ch-o-1", amount=40)
    assert typed.received[1][1] == {**ORDER, "fail_ship": True}  # an untyped step: the input, unchanged


def test_a_result_that_does_not_fit_its_model_fails_the_step_for_good_naming_the_field(rt: Runtime, worker: Worker,
                                                                                     clock: Clock) -> None:
    # Given a step declaring result_model=Charged whose function returns an amount that is not an int
    saga_id = start_saga("typed.bad_result", ORDER)

    # When it runs (its retry policy would allow 3 attempts)
    settle(worker, clock)

    # Then the step failed once, for good (a retry would return the same shape), the error naming the field
    view = rt.store.get(saga_id)
    step = view.step("charge")
    assert view.state == "COMPENSATED" and step.status == "FAILED" and step.attempts == 1
    assert [name for name, _ in typed.received] == ["half_charge"]
    assert step.error is not None and step.error.startswith("StepTypeError: the result of step 'charge' does not "
                                                            "fit Charged: amount: Input should be a valid integer")
    assert "amount" in (view.failure_reason or "")
    assert step.result is None


def test_a_typed_step_called_directly_gets_its_model_from_a_dict() -> None:
    ctx = StepContext(saga_id="s", saga_type="typed.order", step="charge", kind="action", attempt=1, task_id="t",
                      input=ORDER)
    assert typed.charge(ctx, ORDER) == typed.Charged(charge_id="ch-o-1", amount=40)


# ------------------------------------------------------------------ the door


def test_a_bad_field_for_a_typed_step_is_refused_at_the_start_naming_step_and_field(rt: Runtime) -> None:
    # Given a saga with no input model whose charge step reads an Order: the door checks the step's model
    with pytest.raises(InvalidInput) as refused:
        start_saga("typed.order", {"order_id": "o-2", "total": "many"})

    assert str(refused.value) == ("invalid input for saga 'typed.order': step 'charge' (Order) reads total: "
                                  "Input should be a valid integer, unable to parse string as an integer")
    assert [(e["step"], e["loc"]) for e in refused.value.errors] == [("charge", ["total"])]
    assert rt.store.list(limit=10)[1] == 0 and rt.dispatcher.sent == []  # type: ignore[attr-defined]


def test_the_api_answers_422_naming_the_field_and_writes_nothing(rt: Runtime, client: TestClient) -> None:
    # When a start lacks a field the typed step reads
    r = client.post("/api/sagas/typed.order", json={"order_id": "o-3"})

    # Then 422 names the step and the field, and no run row was written, nothing published
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_input" and "step 'charge'" in body["message"] and "total" in body["message"]
    assert body["errors"] == [{"loc": ["total"], "msg": "Field required", "type": "missing", "step": "charge"}]
    assert rt.store.list(limit=10)[1] == 0 and rt.dispatcher.sent == []  # type: ignore[attr-defined]

    # And a good one starts
    assert client.post("/api/sagas/typed.order", json=ORDER).status_code == 202
    assert rt.store.list(limit=10)[1] == 1


def test_a_signal_payload_that_does_not_fit_its_wait_model_is_a_422_naming_the_field(rt: Runtime, worker: Worker,
                                                                                    client: TestClient) -> None:
    saga_id = client.post("/api/sagas/typed.approved", json=ORDER).json()["saga_id"]
    worker.drain()
    assert rt.store.get(saga_id).state == "WAITING"
    before = rt.store.get(saga_id).version

    r = client.post(f"/api/sagas/{saga_id}/signals/approve", json={"approved": True})

    assert r.status_code == 422, r.text
    assert r.json()["message"] == ("invalid payload for signal 'approve' of wait 'approval': by: Field required")
    assert r.json()["errors"][0]["loc"] == ["by"]
    assert rt.store.get(saga_id).version == before  # nothing written
    assert client.post(f"/api/sagas/{saga_id}/signals/approve",
                       json={"approved": True, "by": "ann"}).status_code == 200


# ------------------------------------------------------------------ the schemas


def test_the_api_serves_the_schemas_of_input_steps_and_signals(client: TestClient) -> None:
    r = client.get("/api/saga-types/typed.approved")

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input_schema"] is None  # the saga declares none: its steps do
    charge = body["step_schemas"][0]
    assert charge["name"] == "charge"
    assert charge["input_schema"] == typed.Order.model_json_schema()
    assert charge["result_schema"]["required"] == ["charge_id", "amount"]
    assert body["signal_schemas"] == [{"wait": "approval", "signal": "approve",
                                       "payload_schema": typed.Approval.model_json_schema()}]
    listed = {t["name"]: t for t in client.get("/api/saga-types").json()}
    assert listed["typed.order"]["step_schemas"] == [
        {"name": "charge", "input_schema": typed.Order.model_json_schema(),
         "result_schema": typed.Charged.model_json_schema()},
        {"name": "ship", "input_schema": None, "result_schema": None}]

    missing = client.get("/api/saga-types/typed.nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_saga_type"
    assert client.get("/api/saga-types/typed.order?version=7").status_code == 404


def test_the_console_signal_form_says_what_the_payload_takes(rt: Runtime, worker: Worker,
                                                             client: TestClient) -> None:
    saga_id = start_saga("typed.approved", ORDER)
    worker.drain()
    assert client.post("/console/login", data={"token": TOKEN, "next": "/console/"},
                       follow_redirects=False).status_code == 303

    page = client.get(f"/console/sagas/{saga_id}").text

    assert 'id="signal-fields-approve">approve takes approved: boolean (required), by: string (required)' in page


# ------------------------------------------------------------------ declarations


class Other(BaseModel):
    x: int


def test_declarations_are_checked_with_errors_that_say_what_to_do() -> None:
    def count(ctx: StepContext, n: int) -> dict[str, Any]:
        return {}

    with pytest.raises(DefinitionError, match=r"parameter 'n' \(the saga's input\) is annotated <class 'int'>; "
                                              "annotate it with a pydantic model .* or dict"):
        step_task("typed.count", queue="typed")(count)

    def undo(ctx: StepContext, order: dict[str, Any], charged: typed.Charged) -> None:
        pass

    with pytest.raises(DefinitionError, match=r"annotate parameter 'charged' `Charged \| None`"):
        step_task("typed.undo", queue="typed")(undo)

    def maybe(ctx: StepContext, order: dict[str, Any]) -> typed.Charged | None:
        return None

    with pytest.raises(DefinitionError, match=r"annotate the return `-> Charged`"):
        step_task("typed.maybe", queue="typed")(maybe)

    with pytest.raises(DefinitionError, match=r"step 'x': result_model must be a pydantic BaseModel subclass"):
        Step("x", action="typed.ship", compensation=None, result_model=dict)  # type: ignore[arg-type]

    with pytest.raises(DefinitionError, match=r"input_model=Other but action 'typed.charge' is annotated Order"):
        Step("x", action=typed.charge, compensation=None, input_model=Other)

    with pytest.raises(DefinitionError, match=r"only a compensation receives its action's result"):
        Step("x", action=typed.refund, compensation=None)


def test_an_annotation_that_cannot_be_resolved_is_refused_when_declared() -> None:
    def late(ctx: StepContext, order: NotDefinedAnywhere) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(DefinitionError, match=r"'NotDefinedAnywhere' of order cannot be resolved .* import it at "
                                              "module level"):
        step_task("typed.late", queue="typed")(late)


def test_models_are_not_part_of_the_shape() -> None:
    # A typed step and the same step by task names: one shape, one fingerprint (a model may be tuned in place,
    # as a saga's input model may; a changed contract that old runs cannot meet is a new version, by choice)
    by_function = Saga("typed.shape", steps=[Step("charge", action=typed.charge, compensation=typed.refund)])
    by_name = Saga("typed.shape", steps=[Step("charge", action="typed.charge", compensation="typed.refund")])

    assert by_function.plan.task_steps[0].input_model is typed.Order
    assert by_name.plan.task_steps[0].input_model is None
    assert by_function.fingerprint == by_name.fingerprint


def test_typing_the_example_payment_step_kept_every_shop_fingerprint() -> None:
    # The example shop's charge returns a `Charged` model: its sagas keep the fingerprints they had before
    # (recorded by deployed workers; a changed one would refuse to start beside them)
    from tasks.payment import Charged
    from tasks.sagas import order_fulfillment, order_fulfillment_parallel, order_with_approval

    assert order_fulfillment.step("process_payment").result_model is Charged
    assert order_fulfillment_parallel.step("process_payment").result_model is Charged
    assert (order_fulfillment.fingerprint, order_fulfillment_parallel.fingerprint, order_with_approval.fingerprint) == (
        "4c84dd2262ee4792", "b7980f4942b27805", "95c88b553c86fd84")
