"""The in-process tier's step functions (tests/inprocess/test_inprocess.py, test_children_inprocess.py):
one behaviour for every step, steered by the saga's input, and the record of its calls.

`calls` and `switched_off` are cleared before each in-process test (tests/inprocess/conftest.py).
"""
from __future__ import annotations

from typing import Any

from workflows import PermanentError, RetryPolicy, StepContext, step_task
from workflows.testing import Clock, Worker

calls: list[str] = []
"""Every call of the in-process step functions: '<kind>:<step>:<attempt>' (per test: cleared)."""
switched_off: set[str] = set()
"""Steps whose function fails (transiently) while named here, when their behaviour says `switch`."""


def behave(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    b = data.get("behaviour" if ctx.kind == "action" else "compensation_behaviour", {}).get(ctx.step, {})
    calls.append(f"{ctx.kind}:{ctx.step}:{ctx.attempt}")
    if b.get("fail") == "permanent":
        raise PermanentError(f"{ctx.step} refuses")
    if ctx.attempt <= b.get("fail_times", 0):
        raise ConnectionError(f"{ctx.step} flaked on attempt {ctx.attempt}")
    if b.get("switch") and ctx.step in switched_off:
        raise ConnectionError(f"{ctx.step} is switched off")
    return {"step": ctx.step, "saw": sorted(ctx.results)}


act = step_task("inproc.act", queue="inproc")(behave)
undo = step_task("inproc.undo", queue="inproc")(behave)
POLICY = RetryPolicy(max_attempts=3, initial_interval=2.0, backoff=2.0, max_interval=10.0, jitter=False)


def settle(worker: Worker, clock: Clock) -> None:
    """Deliver everything, moving the clock past every retry's countdown (at most 10 s each)."""
    for _ in range(4):
        worker.drain()
        clock.advance(10)
