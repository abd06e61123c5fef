"""Faults injected into a team's own step functions, and a record of every call.

The in-process worker runs each step task through `instrument`: a wrapper around the task's function
(the team's module is not touched) that consults the armed faults before (or after) calling it and
records the call (`Call`): what the function received and what it returned or raised.

A fault names a step task (`"payment.charge"`) or a step (`"process_payment"`) and a side (the
action by default, or the compensation); it strikes a number of times (every time by default).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel

from workflows.core.errors import PermanentError
from workflows.core.steps import StepContext, StepError, StepTask


class InjectedFault(Exception):
    """A transient failure the test kit injected: retried as the step's retry policy says."""


class InjectedPermanentFault(PermanentError):
    """A permanent failure the test kit injected: never retried, the saga compensates."""


Side = Literal["action", "compensation"]


@dataclass
class Fault:
    """One armed fault. Mutable: `struck` counts the calls it failed."""

    target: str
    """A step task name (`payment.charge`) or a step name (`process_payment`)."""
    side: Side
    how: Literal["fail", "time_out"]
    times: int | None
    """How many calls it strikes; None: every call."""
    error: BaseException | type[BaseException] | None = None
    """What a "fail" raises; None: `InjectedPermanentFault` if `permanent`, else `InjectedFault`."""
    permanent: bool = False
    after: bool = False
    """Strike after the function ran (its effect happened, its result is lost), not before it."""
    struck: int = 0

    def matches(self, task: str, ctx: StepContext) -> bool:
        if self.times is not None and self.struck >= self.times:
            return False
        if ctx.kind != self.side:
            return False
        branch_of, _, index = ctx.step.rpartition("-")  # a fan-out's branch `<step>-<i>` is its step's
        return self.target in (task, ctx.step) or (self.target == branch_of and index.isdigit())

    def exception(self, ctx: StepContext) -> BaseException:
        if self.how == "time_out":
            limit: BaseException = SoftTimeLimitExceeded(f"{ctx.step} timed out (injected by the test kit)")
            return limit
        if isinstance(self.error, BaseException):
            return self.error
        if self.error is not None:
            return self.error(f"{ctx.step} failed (injected by the test kit)")
        kind = InjectedPermanentFault if self.permanent else InjectedFault
        return kind(f"{ctx.step} failed on attempt {ctx.attempt} (injected by the test kit)")


@dataclass(frozen=True)
class Call:
    """One call of a step function, as the in-process worker made it. Immutable."""

    saga_id: str
    saga_type: str
    task: str
    step: str
    kind: str
    """'action' or 'compensation'."""
    attempt: int
    input: dict[str, Any]
    received: dict[str, Any] | None
    """A compensation: the result of its action it was given (None: the action failed or timed out)."""
    error: StepError | None
    """A compensation of an action that did not succeed: that action's error, as the function saw it."""
    results: dict[str, dict[str, Any]]
    """The results of the steps before it, as the function saw them."""
    returned: dict[str, Any] | None = None
    raised: str | None = None
    """'<exception type>: <message>' when the call raised (an injected fault included)."""
    injected: bool = False
    """The call failed because of a fault the test armed."""

    @property
    def ok(self) -> bool:
        return self.raised is None


@dataclass
class Faults:
    """The faults armed in one test, consulted in the order they were armed."""

    armed: list[Fault] = field(default_factory=list)

    def arm(self, fault: Fault) -> Fault:
        if fault.times is not None and fault.times < 1:
            raise ValueError(f"a fault strikes at least once (times={fault.times})")
        self.armed.append(fault)
        return fault

    def due(self, task: str, ctx: StepContext) -> Fault | None:
        """The first armed fault that strikes this call (counted as struck), or None."""
        for fault in self.armed:
            if fault.matches(task, ctx):
                fault.struck += 1
                return fault
        return None

    def clear(self) -> None:
        self.armed.clear()


def instrument(st: StepTask, faults: Faults, calls: list[Call]) -> StepTask:
    """`st` with its function wrapped: armed faults strike, every call is recorded in `calls`."""

    def fn(ctx: StepContext, data: dict[str, Any]) -> Any:
        def record(returned: dict[str, Any] | None = None, raised: BaseException | None = None,
                   injected: bool = False) -> None:
            calls.append(Call(ctx.saga_id, ctx.saga_type, st.name, ctx.step, ctx.kind, ctx.attempt, ctx.input,
                              ctx.result, ctx.error, dict(ctx.results), returned,
                              None if raised is None else f"{type(raised).__name__}: {raised}", injected))

        fault = faults.due(st.name, ctx)
        if fault is not None and not fault.after:
            exc = fault.exception(ctx)
            record(raised=exc, injected=True)
            raise exc
        try:
            out = st(ctx, data)  # as the worker calls it: typed parameters get their models
        except BaseException as e:
            record(raised=e)
            raise
        if fault is not None:
            exc = fault.exception(ctx)
            record(returned=out.model_dump(mode="json") if isinstance(out, BaseModel) else out, raised=exc,
                   injected=True)
            raise exc
        record(returned=out.model_dump(mode="json") if isinstance(out, BaseModel) else out)
        return out

    # `st(...)` inside converts the input; the wrapper keeps the result's model for its validation
    return StepTask(st.name, st.queue, fn, replace(st.signature, input=None, takes_result=False, action_result=None))
