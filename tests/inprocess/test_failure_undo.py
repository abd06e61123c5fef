"""The failed step's own undo: `Step(..., compensate_failure=True)`.

A step that may have acted before failing (a charge taken before the gateway errored) declares
that its compensation also runs when its action fails for good. The pure engine first (lines,
groups, fan-outs), then the in-process tier (SQLite, recorded messages, the test clock): what
the compensation receives (`ctx.result` None, `ctx.error`), on every attempt.
"""
from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

import pytest

from workflows import DefinitionError, PermanentError, RetryPolicy, Saga, Step, StepContext, register_saga, step_task
from workflows.core.definition import ForEach, Parallel
from workflows.core.engine import decide, new_run
from workflows.core.shape import fingerprint_of, shape_of
from workflows.core.state import (ActionFailed, ActionSucceeded, CompensationFailed, CompensationSucceeded, ErrorInfo,
                                  Resume, RunState, RunStatus, Started, Transition)
from workflows.core.steps import StepError
from workflows.operations.client import start_saga
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import message_for
from workflows.testing import Clock, Worker

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
GATEWAY = ErrorInfo("GatewayError", "502 after the charge was taken")
_n = itertools.count()


def ids() -> str:
    return f"{next(_n):032x}"


def start(saga: Saga, data: dict[str, Any] | None = None) -> Transition:
    return decide(saga, new_run(saga, "r1", data or {}, "start"), Started(), NOW, ids)


def step(saga: Saga, run: RunState, outcome: Any) -> Transition:
    return decide(saga, run, outcome, NOW, ids)


def sent(t: Transition) -> list[tuple[str, str]]:
    return [(c.step, c.kind) for c in t.commands]


LINE = Saga("undo_line", steps=[
    Step("reserve", action="inv.reserve", compensation="inv.release"),
    Step("charge", action="pay.charge", compensation="pay.refund", compensate_failure=True),
    Step("ship", action="ship.create", compensation="ship.cancel"),
])
PLAIN = Saga("plain_line", steps=[
    Step("reserve", action="inv.reserve", compensation="inv.release"),
    Step("charge", action="pay.charge", compensation="pay.refund"),
])


# ------------------------------------------------------------------ the engine


def test_a_step_declaring_it_is_compensated_after_its_action_failed_then_the_steps_before() -> None:
    # Given a charge that may have acted before it failed
    t = start(LINE)
    t = step(LINE, t.after, ActionSucceeded("reserve", {"r": 1}))

    # When the charge fails for good
    t = step(LINE, t.after, ActionFailed("charge", GATEWAY, retryable=False))

    # Then its own compensation runs first (newest first), then the reservation's
    assert sent(t) == [("charge", "compensation")]
    assert t.after.step("charge").result is None and t.after.step("charge").error == str(GATEWAY)
    _, kwargs = message_for(t.after, t.commands[0])
    assert kwargs["result"] is None and kwargs["error"] == {"type": "GatewayError",
                                                            "message": "502 after the charge was taken"}
    t = step(LINE, t.after, CompensationSucceeded("charge"))
    assert sent(t) == [("reserve", "compensation")]
    t = step(LINE, t.after, CompensationSucceeded("reserve"))
    assert t.after.status == RunStatus.COMPENSATED
    assert {s.name: s.status.value for s in t.after.steps} == {
        "reserve": "COMPENSATED", "charge": "COMPENSATED", "ship": "PENDING"}


def test_by_default_a_failed_step_is_not_compensated() -> None:
    t = start(PLAIN)
    t = step(PLAIN, t.after, ActionSucceeded("reserve", {}))
    t = step(PLAIN, t.after, ActionFailed("charge", GATEWAY, retryable=False))
    assert sent(t) == [("reserve", "compensation")]
    assert t.after.step("charge").status.value == "FAILED"


def test_retries_exhausted_count_as_failing_for_good_and_its_compensation_keeps_the_error() -> None:
    saga = Saga("undo_retry", steps=[Step(
        "charge", action="pay.charge", compensation="pay.refund", compensate_failure=True,
        retry=RetryPolicy(max_attempts=2, initial_interval=0, jitter=False),
        compensation_retry=RetryPolicy(max_attempts=2, initial_interval=0, jitter=False))])
    t = start(saga)
    t = step(saga, t.after, ActionFailed("charge", GATEWAY, retryable=True))
    assert sent(t) == [("charge", "action")]  # a retry first: not yet for good
    t = step(saga, t.after, ActionFailed("charge", GATEWAY, retryable=True))
    assert sent(t) == [("charge", "compensation")] and len(t.dead_letters) == 1

    # a compensation attempt failing keeps the action's error on the row: the retry receives it too
    t = step(saga, t.after, CompensationFailed("charge", ErrorInfo("ConnectionError", "refund api down"), True))
    assert sent(t) == [("charge", "compensation")]
    assert message_for(t.after, t.commands[0])[1]["error"]["type"] == "GatewayError"
    # stuck, then resumed by an operator: still the action's error
    t = step(saga, t.after, CompensationFailed("charge", ErrorInfo("ConnectionError", "refund api down"), True))
    assert t.after.status == RunStatus.FAILED and "refund api down" in (t.after.failure_reason or "")
    t = step(saga, t.after, Resume(None, "refund api back", "ops"))
    assert message_for(t.after, t.commands[0])[1]["error"]["type"] == "GatewayError"
    t = step(saga, t.after, CompensationSucceeded("charge"))
    assert t.after.status == RunStatus.COMPENSATED


def test_in_a_group_the_failed_branch_declaring_it_is_undone_with_its_siblings() -> None:
    saga = Saga("undo_group", steps=[
        Step("validate", action="o.validate", compensation=None),
        Parallel("prepare", [Step("reserve", action="inv.reserve", compensation="inv.release"),
                             Step("charge", action="pay.charge", compensation="pay.refund", compensate_failure=True)]),
    ])
    t = start(saga)
    t = step(saga, t.after, ActionSucceeded("validate", {}))
    t = step(saga, t.after, ActionFailed("charge", GATEWAY, retryable=False))
    assert sent(t) == []  # reserve is still in flight: the group waits for it
    t = step(saga, t.after, ActionSucceeded("reserve", {}))
    assert sorted(sent(t)) == [("charge", "compensation"), ("reserve", "compensation")]


def test_in_a_fan_out_exactly_the_branches_that_succeeded_or_failed_are_undone() -> None:
    saga = Saga("undo_fan", steps=[ForEach(
        Step("ship", action="s.ship", compensation="s.cancel", compensate_failure=True),
        items=lambda d: d["parcels"], max_items=5)])
    t = start(saga, {"parcels": [0, 1, 2]})
    t = step(saga, t.after, ActionSucceeded("ship-0", {}))
    t = step(saga, t.after, ActionFailed("ship-1", GATEWAY, retryable=False))
    assert sent(t) == []  # ship-2 in flight
    t = step(saga, t.after, ActionFailed("ship-2", ErrorInfo("Boom", "x"), retryable=False))
    assert sorted(sent(t)) == [("ship-0", "compensation"), ("ship-1", "compensation"), ("ship-2", "compensation")]


def test_the_fingerprint_changes_only_when_it_is_set() -> None:
    plain = [Step("a", action="x.a", compensation="x.ua")]
    assert shape_of(plain) == [{"step": "a", "action": "x.a", "compensation": "x.ua"}]
    assert fingerprint_of(shape_of(plain)) == fingerprint_of(
        [{"step": "a", "action": "x.a", "compensation": "x.ua"}])  # as before the option existed
    declared = [Step("a", action="x.a", compensation="x.ua", compensate_failure=True)]
    assert fingerprint_of(shape_of(declared)) != fingerprint_of(shape_of(plain))


def test_it_is_refused_without_a_compensation_or_when_not_a_bool() -> None:
    with pytest.raises(DefinitionError, match="compensate_failure=True needs a compensation"):
        Step("a", action="x.a", compensation=None, compensate_failure=True)
    with pytest.raises(DefinitionError, match="compensate_failure must be True or False"):
        Step("a", action="x.a", compensation="x.ua", compensate_failure="yes")  # type: ignore[arg-type]


def test_a_step_error_reads_a_rows_error() -> None:
    assert StepError.from_row("GatewayError: 502: bad gateway") == StepError("GatewayError", "502: bad gateway")
    assert StepError.from_row("exceeded its time limit of 2s") == StepError("", "exceeded its time limit of 2s")
    assert StepError.from_row("cancelled: customer asked") == StepError("", "cancelled: customer asked")
    assert str(StepError("GatewayError", "502")) == "GatewayError: 502"


# ------------------------------------------------------------------ in process: what the compensation receives

received: list[tuple[str, int, dict[str, Any] | None, StepError | None]] = []
"""(step, attempt, ctx.result, ctx.error) of every compensation call."""


@step_task("undo.charge", queue="undo")
def charge(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    raise PermanentError("gateway 502 after taking the money")


@step_task("undo.refund", queue="undo")
def refund(ctx: StepContext, data: dict[str, Any]) -> None:
    received.append((ctx.step, ctx.attempt, ctx.result, ctx.error))
    if ctx.step == "charge" and ctx.attempt < data.get("refund_ok_at", 1):
        raise ConnectionError("refund api down")


@step_task("undo.reserve", queue="undo")
def reserve(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    return {"reserved": True}


register_saga(Saga("undo.shop", steps=[
    Step("reserve", action=reserve, compensation=refund),
    Step("charge", action=charge, compensation=refund, compensate_failure=True,
         compensation_retry=RetryPolicy(max_attempts=3, initial_interval=1, jitter=False)),
]))


@pytest.fixture
def worker(saga_worker: Worker, saga_clock: Clock, saga_runtime: Runtime) -> Any:
    received.clear()
    return saga_worker, saga_clock, saga_runtime


def test_the_compensation_receives_no_result_and_the_error_on_every_attempt(worker: Any) -> None:
    w, clock, rt = worker
    # Given a charge that raises after taking the money, and a refund api down for one attempt
    saga_id = start_saga("undo.shop", {"refund_ok_at": 2})

    # When every message is delivered (the clock past the refund's retry)
    for _ in range(3):
        w.drain()
        clock.advance(5)

    # Then the charge is refunded (twice asked: its retry got the same facts), then the reservation
    assert received == [
        ("charge", 1, None, StepError("PermanentError", "gateway 502 after taking the money")),
        ("charge", 2, None, StepError("PermanentError", "gateway 502 after taking the money")),
        ("reserve", 1, {"reserved": True}, None)]
    view = rt.store.get(saga_id)
    assert view.state == "COMPENSATED"
    assert [(s.name, s.status) for s in view.steps] == [("reserve", "COMPENSATED"), ("charge", "COMPENSATED")]
