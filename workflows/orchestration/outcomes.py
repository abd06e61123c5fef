"""A step function's run, as the engine reads it: its outcome, and its error if it raised.

The step's retry policy says what is retryable and how long to wait (`RetryPolicy.is_retryable`,
`countdown`); whether it is retried is the engine's decision (`core.retry.retry_verdict`).
"""
from __future__ import annotations

import json
import traceback as tb
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel

from workflows.core.definition import Saga
from workflows.core.run import Side
from workflows.core.state import (ActionFailed, ActionSucceeded, ActionTimedOut, CompensationFailed,
                                  CompensationSucceeded, ErrorInfo, Outcome)
from workflows.core.steps import StepContext, StepTask
from workflows.core.typed import fit


def run_function(saga: Saga, st: StepTask, ctx: StepContext,
                 data: dict[str, Any]) -> tuple[Outcome, BaseException | None]:
    """Run `st`'s function for `ctx`: the outcome to decide on, and the error it raised."""
    side = Side(ctx.kind)
    declared = saga.plan.node(ctx.step).policy(side)
    if declared is None:  # a message for a side the step has none of: a definition changed under a run
        raise TypeError(f"step {ctx.step!r} of saga {saga.name!r} sends no {side} message")
    policy = declared.retry
    try:
        value = as_result(st(ctx, data), st.name)
        if side is Side.ACTION:
            value = typed_result(saga, st, ctx.step, value)
    except SoftTimeLimitExceeded as exc:
        reason = f"exceeded its time limit of {declared.timeout:g}s"
        if side is Side.ACTION:
            return ActionTimedOut(ctx.step, reason), exc
        return CompensationFailed(ctx.step, ErrorInfo("TimeLimitExceeded", reason), True,
                                  policy.countdown(ctx.attempt)), exc
    except Exception as exc:  # the policy decides what is retryable
        info = ErrorInfo(type(exc).__name__, str(exc), tb.format_exc())
        retryable, countdown = policy.is_retryable(exc), policy.countdown(ctx.attempt)
        if side is Side.ACTION:
            return ActionFailed(ctx.step, info, retryable, countdown), exc
        return CompensationFailed(ctx.step, info, retryable, countdown), exc
    if side is Side.ACTION:
        return ActionSucceeded(ctx.step, value), None
    return CompensationSucceeded(ctx.step), None


def typed_result(saga: Saga, st: StepTask, step: str, value: dict[str, Any]) -> dict[str, Any]:
    """The result as its models read it: the step's `result_model` and the function's return
    annotation, when declared. One that does not fit raises `StepTypeError` naming the fields: a
    permanent failure of the step (a retry would return the same shape)."""
    declared = saga.step(step).result_model
    for model in dict.fromkeys(m for m in (declared, st.signature.result) if m is not None):
        value = fit(model, value, f"the result of step {step!r}").model_dump(mode="json")
    return value


def as_result(out: Any, name: str) -> dict[str, Any]:
    """A step function's return value as its JSON result (None is `{}`, a model its JSON dump)."""
    if out is None:
        return {}
    if isinstance(out, BaseModel):
        return out.model_dump(mode="json")
    if not isinstance(out, dict):
        raise TypeError(f"step task {name!r} must return a dict or None, not {type(out).__name__}")
    try:
        return json.loads(json.dumps(out))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as e:
        raise TypeError(f"step task {name!r} returned a result that is not JSON: {e}") from None
