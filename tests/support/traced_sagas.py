"""Sagas for the tracing tests (tests/inprocess/test_tracing.py in process, tests/servers/test_tracing_workers.py in
real workers through SAGA_EXTRA_MODULES=tests.support.traced_sagas). Their steps run on two queues,
`traced_a` and `traced_b`; each opens a span of its own (a service's own work) when tracing is on,
and obeys the input: `fail` names a step that fails for good, `backoff` one that fails once and is
retried after a long backoff."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from workflows import PermanentError, RetryPolicy, Saga, Step, StepContext, register_saga, step_task
from workflows.core.definition import Wait
from workflows.runtime.container import get_runtime


class Flaky(Exception):
    pass


def work(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    if get_runtime().tracing.enabled:
        from opentelemetry import trace  # the service's own instrumentation, inside the step

        with trace.get_tracer("shop").start_as_current_span(f"service {ctx.kind} {ctx.step}"):
            return _behave(ctx, data)
    return _behave(ctx, data)


def _behave(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    if ctx.kind == "action" and data.get("fail") == ctx.step:
        raise PermanentError(f"{ctx.step} refuses")
    if ctx.kind == "action" and data.get("backoff") == ctx.step and ctx.attempt == 1:
        raise Flaky(f"{ctx.step} flaked")
    return {"step": ctx.step, "pid": os.getpid()}


on_a = step_task("traced.a", queue="traced_a")(work)
on_b = step_task("traced.b", queue="traced_b")(work)
undo_a = step_task("traced.undo_a", queue="traced_a")(work)
undo_b = step_task("traced.undo_b", queue="traced_b")(work)

QUICK = RetryPolicy(max_attempts=3, initial_interval=0.1, backoff=1.0, max_interval=0.1, jitter=False)
SLOW = RetryPolicy(max_attempts=2, initial_interval=300, backoff=1.0, max_interval=300, jitter=False)
"""A retry 5 minutes later: longer than SAGA_TRACING_PARK_AFTER (60 s), a new trace segment."""

line = register_saga(Saga("tests.traced_line", steps=[
    Step("reserve", action=on_a, compensation=undo_a, retry=QUICK, timeout=10),
    Step("charge", action=on_b, compensation=undo_b, retry=SLOW, timeout=10),
    Step("ship", action=on_a, compensation=undo_a, retry=QUICK, timeout=10),
]))

waiting = register_saga(Saga("tests.traced_wait", steps=[
    Step("reserve", action=on_a, compensation=undo_a, retry=QUICK, timeout=10),
    Wait("approval", signal="approve", timeout=timedelta(hours=1)),
    Step("ship", action=on_b, compensation=undo_b, retry=QUICK, timeout=10),
]))
