"""Sagas that get stuck the ways docs/operations/runbook.md covers, for tests/servers/test_runbook.py.

Their steps run `tests.support.sagas.behave` (the behaviour per step comes from the input:
{"fail": "permanent"}, {"fail_times": n}, {"switch": true}: fails while the Redis key
switch:<saga id>:<step> exists) as tasks of their own on the queue `runbook`, served only by the
runbook test's worker, which loads this module through SAGA_EXTRA_MODULES. The step `lost` of
`runbook.orphaned` goes to a queue nobody consumes.

The retry policies make each kind of stuck deterministic: a compensation that gives up in about a
second (the run is FAILED with an open dead letter), and an action or compensation whose next try
is ten minutes away (the run stays RUNNING or COMPENSATING until an operator dispatches it now).

`runbook.versioned` version 2 is here (the worker holds it); version 1 is in
`tests.support.runbook_v1`, which only the test process imports: a v1 run is one whose version
no live worker holds.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from tests.support.sagas import behave
from workflows import RetryPolicy, Saga, Step, register_saga, step_task
from workflows.core.definition import Wait

act = step_task("runbook.action", queue="runbook")(behave)
undo = step_task("runbook.compensate", queue="runbook")(behave)
nobody = step_task("runbook.unconsumed", queue="runbook_nobody")(behave)

QUICK = RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0, max_interval=0.5)
"""Gives up within about a second."""
LATER = RetryPolicy(max_attempts=5, initial_interval=600, backoff=1.0, max_interval=600, jitter=False)
"""The next try is ten minutes away: stuck until an operator dispatches it now."""

order = register_saga(Saga("runbook.order", steps=[
    Step("reserve", action=act, compensation=undo, retry=QUICK, compensation_retry=QUICK, timeout=10),
    Step("charge", action=act, compensation=undo, retry=QUICK, compensation_retry=LATER, timeout=10),
    Step("ship", action=act, compensation=None, retry=LATER, timeout=10),
]))
"""FAILED: ship fails for good and reserve's compensation is switched off (it gives up quickly).
COMPENSATING: ship fails for good and charge's compensation is switched off (its retry waits).
RUNNING: ship's action is switched off (its retry waits). An action dead letter: reserve fails
every time (the run compensates by itself)."""

orphaned = register_saga(Saga("runbook.orphaned", steps=[
    Step("a", action=act, compensation=undo, retry=QUICK, compensation_retry=QUICK, timeout=10),
    Step("lost", action=nobody, compensation=undo, retry=QUICK, compensation_retry=QUICK, timeout=1),
]))
"""RUNNING, and nothing moves: its second step's queue has no worker."""


class Approval(BaseModel):
    approved: bool
    reason: str = ""


def approved(payload: dict[str, Any]) -> bool:
    return bool(payload["approved"])


sign_off = register_saga(Saga("runbook.sign_off", steps=[
    Step("reserve", action=act, compensation=undo, retry=QUICK, compensation_retry=QUICK, timeout=10),
    Wait("sign_off", signal="approval", timeout=timedelta(hours=1), model=Approval, approve=approved),
    Step("ship", action=act, compensation=None, retry=QUICK, timeout=10),
]))
"""WAITING: parked on the signal `approval` for an hour (no other name of it says "approval")."""

VERSIONED = "runbook.versioned"


def versioned(version: int) -> Saga:
    """Version 2 differs from 1 only in the patience of its actions: a v1 run may move to it."""
    retry = QUICK if version == 1 else RetryPolicy(max_attempts=5, initial_interval=0.2, max_interval=1.0)
    return Saga(VERSIONED, version=version, steps=[
        Step("reserve", action=act, compensation=undo, retry=retry, compensation_retry=QUICK, timeout=10),
        Step("ship", action=act, compensation=None, retry=retry, timeout=10),
    ])


versioned_v2 = register_saga(versioned(2))
