"""Sagas for the notification tests with real workers (tests/servers/test_notifications_workers.py,
loaded by its worker through SAGA_EXTRA_MODULES). Their steps run on the queue `notify`, and obey the
input: `exhaust` names a step that fails on every attempt (it runs out of retries), `refuse` one that
fails for good at once, `stuck_undo` one whose compensation always fails (the run ends FAILED)."""
from __future__ import annotations

from typing import Any

from workflows import PermanentError, RetryPolicy, Saga, Step, StepContext, register_saga, step_task

FAST = RetryPolicy(max_attempts=2, initial_interval=0.2, backoff=1.0, max_interval=0.2, jitter=False)


class Flaky(Exception):
    pass


def behave(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    if ctx.kind == "action" and data.get("exhaust") == ctx.step:
        raise Flaky(f"{ctx.step} is down (attempt {ctx.attempt})")
    if ctx.kind == "action" and data.get("refuse") == ctx.step:
        raise PermanentError(f"{ctx.step} refuses")
    if ctx.kind == "compensation" and data.get("stuck_undo") == ctx.step:
        raise Flaky(f"the undo of {ctx.step} is down (attempt {ctx.attempt})")
    return {"step": ctx.step}


act = step_task("notify.act", queue="notify")(behave)
undo = step_task("notify.undo", queue="notify")(behave)

LINE = register_saga(Saga("tests.notify_line", steps=[
    Step("a", action=act, compensation=undo, retry=FAST, compensation_retry=FAST, timeout=30),
    Step("b", action=act, compensation=undo, retry=FAST, compensation_retry=FAST, timeout=30),
]))
