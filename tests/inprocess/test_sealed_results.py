"""Sealed step results (`Step(sensitive_result=...)`) and `rotate` in the in-process tier: a result's
sealed field is stored and sent sealed, opened for the later steps and the compensation that read
it; a rotation re-seals runs' inputs, steps' results and dead letters' messages into the new key."""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support import sealed_steps
from tests.support.sealed_steps import CardOrder, charge, detokenize, refund, tokenize, use_token
from workflows import RetryPolicy, Saga, Step, get_saga, register_saga, start_saga
from workflows.core.sealed import is_sealed
from workflows.operations.rotation import rotate
from workflows.runtime.container import Runtime
from workflows.testing import Worker

CARD = "4111111111111111"


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


OLD, NEW, HASH = f"old1:{key('old')}", f"new2:{key('new')}", key("hash")

TOKENS = register_saga(Saga("sealed.tokens", sensitive=("payment.card",), input_model=CardOrder, steps=[
    Step("tokenize", action=tokenize, compensation=detokenize, sensitive_result=("token",)),
    Step("use", action=use_token, compensation=None),
]))
STUCK = register_saga(Saga("sealed.stuck", sensitive=("payment.card",), input_model=CardOrder, steps=[
    Step("charge", action=charge, compensation=refund, compensate_failure=True,
         compensation_retry=RetryPolicy(max_attempts=1, initial_interval=1.0, jitter=False)),
]))


@pytest.fixture
def saga_settings() -> dict[str, Any]:
    return {"field_keys": OLD, "field_hash_key": HASH}


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    sealed_steps.seen.clear()


def order(**extra: Any) -> dict[str, Any]:
    return {"order_id": "o-1", "payment": {"card": CARD}, **extra}


def test_a_sealed_result_is_stored_sealed_and_opened_for_the_steps_that_read_it(rt: Runtime, worker: Worker) -> None:
    saga_id = start_saga("sealed.tokens", order(decline=True))
    worker.drain()

    view = get_saga(saga_id)
    assert view.state == "COMPENSATED"
    # the later step and the compensation were given the clear token
    assert sealed_steps.seen == [("action", "tokenize", CARD), ("action", "use", f"tok-{CARD}"),
                                 ("compensation", "tokenize", f"tok-{CARD}")]
    [tok] = [s for s in view.steps if s.name == "tokenize"]
    assert tok.result is not None and is_sealed(tok.result["token"]) and tok.result["last4"] == "1111"
    assert CARD not in json.dumps([s.result for s in view.steps])


def test_rotate_reseals_inputs_results_and_dead_letters_into_the_new_key(rt: Runtime, worker: Worker,
                                                                         saga_kit: Any) -> None:
    done = start_saga("sealed.tokens", order())
    saga_kit.fail("sealed.refund", permanent=True, side="compensation")  # its refund fails: a dead letter
    stuck = start_saga("sealed.stuck", order(decline=True))
    worker.drain()
    assert get_saga(done).state == "COMPLETED"
    assert get_saga(stuck).state == "FAILED"
    [dl] = get_saga(stuck).dead_letters
    assert dl.kwargs["input"]["payment"]["card"]["kid"] == "old1"

    # the new key comes first; the old one is still held
    rt.settings = rt.settings.model_copy(update={"field_keys": SecretStr(f"{NEW},{OLD}")})
    rt._sealer = None
    report = rotate(rt, batch=1)

    assert (report.key, report.runs, report.step_results, report.dead_letters, report.remaining) == (
        "new2", 2, 1, 1, {})
    assert rt.store.dead_letter(dl.id).kwargs["input"]["payment"]["card"]["kid"] == "new2"
    view = get_saga(done)
    assert view.input["payment"]["card"]["kid"] == "new2" and view.steps[0].result["token"]["kid"] == "new2"
    assert rotate(rt).runs == 0  # nothing left


def test_an_envelope_under_a_key_no_longer_held_fails_its_step_naming_the_key(rt: Runtime, saga_kit: Any) -> None:
    saga_id = start_saga("sealed.tokens", order())
    # the old key dropped too early (before the rotation, or with messages of before it still queued)
    rt.settings = rt.settings.model_copy(update={"field_keys": SecretStr(NEW)})
    rt._sealer = None
    saga_kit.settle()

    view = get_saga(saga_id)
    [tok] = [s for s in view.steps if s.name == "tokenize"]
    assert view.state == "COMPENSATED" and tok.status == "FAILED"
    assert tok.error is not None and "SealingError" in tok.error and "'old1'" in tok.error
    assert sealed_steps.seen == []  # the function never ran
