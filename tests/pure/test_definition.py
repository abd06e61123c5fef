"""Declarations are validated when made, with errors that say what to do."""
from __future__ import annotations

import pytest
from pydantic import BaseModel

from workflows import DefinitionError, InvalidInput, Saga, Step, UnknownSaga
from workflows.core.definition import SagaRegistry
from workflows.core.steps import step_task


def test_a_step_must_say_explicitly_that_it_has_no_compensation() -> None:
    with pytest.raises(DefinitionError, match="compensation=None explicitly"):
        Step("charge", action="payment.charge")
    assert Step("notify", action="notify.send", compensation=None).compensation is None


@pytest.mark.parametrize("build, message", [
    (lambda: Saga("s", steps=[]), "no steps"),
    (lambda: Saga("s", steps=[Step("a", action="x.a", compensation=None)] * 2), "unique"),
    (lambda: Saga("bad name!", steps=[Step("a", action="x.a", compensation=None)]), "saga name"),
    (lambda: Step("a b", action="x.a", compensation=None), "step name"),
    (lambda: Step("a", action=42, compensation=None), "action"),
    (lambda: Step("a", action="x.a", compensation=3.5), "compensation"),
    (lambda: Step("a", action="x.a", compensation=None, timeout=0), "timeout"),
    (lambda: Step("a", action="x.a", compensation=None, retry="3 times"), "retry"),
    (lambda: Saga("s", steps=["a"]), "not a Step"),
    (lambda: Saga("s", steps=[Step("a", action="x.a", compensation=None)], input_model=dict), "input_model"),
    (lambda: Saga("s", steps=[Step("a", action="x.a", compensation=None)], deadline=-1), "deadline"),
])
def test_invalid_declarations_are_refused(build, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError, match=message):
        build()


def test_step_task_names_and_queues_are_checked() -> None:
    with pytest.raises(DefinitionError, match="dotted"):
        step_task("charge", queue="payment")
    with pytest.raises(DefinitionError, match="reserved"):
        step_task("saga.mine", queue="payment")
    with pytest.raises(DefinitionError, match="queue"):
        step_task("payment.x", queue="no spaces")


def test_a_step_task_is_still_a_plain_function() -> None:
    @step_task("tests_plain.double", queue="plain")
    def double(ctx, data):  # type: ignore[no-untyped-def]
        return {"twice": data["n"] * 2}

    assert double(None, {"n": 21}) == {"twice": 42}
    assert Step("d", action=double, compensation=None).action == "tests_plain.double"


def test_registry_refuses_a_different_saga_under_a_taken_name() -> None:
    reg = SagaRegistry()
    reg.register(Saga("s", steps=[Step("a", action="x.a", compensation=None)]))
    with pytest.raises(DefinitionError, match="already registered"):
        reg.register(Saga("s", steps=[Step("b", action="x.b", compensation=None)]))
    with pytest.raises(UnknownSaga, match="unknown saga 'nope'"):
        reg.get("nope")


def test_input_is_validated_against_the_model_with_field_paths_in_the_message() -> None:
    class In(BaseModel):
        amount: int
        email: str

    saga = Saga("s", steps=[Step("a", action="x.a", compensation=None)], input_model=In)
    with pytest.raises(InvalidInput) as info:
        saga.validate_input({"amount": "lots"})
    assert "amount" in str(info.value) and "email" in str(info.value)
    assert {tuple(e["loc"]) for e in info.value.errors} == {("amount",), ("email",)}
    assert saga.validate_input({"amount": "3", "email": "a@b"}) == {"amount": 3, "email": "a@b"}
    with pytest.raises(InvalidInput, match="JSON object"):
        Saga("t", steps=[Step("a", action="x.a", compensation=None)]).validate_input([1, 2])
