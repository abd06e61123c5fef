"""The step task: a thin Celery adapter over the decision loop.

The hot path is one message, one read and one atomic write per step: the task decodes its
message, and the decision loop (`DecisionLoop.step`) reads the run (the guard: a stale or
duplicate message does not run its function), runs the function, decides and commits; the task
then publishes through the loop (`DecisionLoop.publish`) and is acknowledged.

What is not Celery's lives elsewhere: running the function (`orchestration.outcomes`), inline
follow-ups and their Flower events (`orchestration.inline`, `inline_events`), lost-worker counting
(`runtime.redelivery`), recovery after its own commit (`runtime.recovery`), version hand-on and
parking (`runtime.hand_on`), the tests' crash points (`orchestration.crash_points`). What stays
here is what only a Celery task can do: Celery's own retry of this very message (`RetrySelf`),
sending a message on (`HandOn`), the inline budget from the task's time limit.

Crash safety: every message is acknowledged late, after the transition committed and its
follow-up was published (`runtime.recovery` for a redelivery that finds its own commit).

`handle_step` is plain Python over the runtime (no Celery in it): the in-process test tier calls
it with a `Delivery` and a `RecordingDispatcher`. `make_step_task` wraps it as a Celery task.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from workflows.core.definition import Saga
from workflows.core.outcomes import ActionSucceeded
from workflows.core.state import Command, Outcome, RunState, Transition
from workflows.core.steps import StepContext, StepError, StepTask
from workflows.orchestration import crash_points
from workflows.orchestration.inline import InlineBudget, budget_for, consumed_queues, follow, soft_limit
from workflows.orchestration.message import parse_step_message
from workflows.orchestration.outcomes import run_function
from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.delivery import DELIVERY_OPTIONS
from workflows.runtime.dispatch import message_for
from workflows.runtime.hand_on import MAX_HANDOFFS, handoff_delay
from workflows.runtime.poison import dead_letter_message
from workflows.runtime.sealing import open_input, seal_result
from workflows.runtime.step_report import Delivery, HandOn, StepReport
from workflows.runtime.tracing import NO_TRACING, Attempts, trace_headers

UNTRACED = NO_TRACING.attempts(None)


@dataclass(frozen=True)
class RetrySelf:
    """The next attempt is this very task again: Celery's own retry (same task id, a countdown)."""

    args: list[Any]
    kwargs: dict[str, Any]
    countdown: float
    error: BaseException
    headers: dict[str, str] | None = None
    """Its trace headers, from the attempt that failed (`runtime.tracing`)."""


def handle_step(rt: Runtime, st: StepTask, saga_id: str, step: str, delivery: Delivery, *,
                inline: InlineBudget | None = None, **message: Any) -> RetrySelf | HandOn | None:
    """One step message through the decision loop, then its publish. Returns a `RetrySelf` when
    the next attempt is this message again (the caller raises Celery's retry), a `HandOn` when
    this worker does not hold the run's saga version (the caller sends the message on).

    With an `inline` budget, a follow-up step on a queue this worker consumes runs here, in this
    delivery, instead of being published (`orchestration.inline`); each inline step is committed
    on its own."""
    with rt.tracing.attempts(delivery.headers) as spans:  # a span per attempt, current while it runs and publishes
        queues = inline.queues if inline is not None else frozenset({st.queue}) if rt.settings.inline_steps else None
        done = _handle_one(rt, st, saga_id, step, delivery, by=delivery.task_id, spans=spans, inline_queues=queues,
                           **message)
        if not isinstance(done, Transition):
            return done
        t: Transition | None = done
        if inline is not None:
            def run_one(next_task: StepTask, cmd: Command, kwargs: dict[str, Any], run: RunState) -> Transition | None:
                nxt = _handle_one(rt, next_task, saga_id, cmd.step, Delivery(cmd.task_id, kwargs=kwargs),
                                  by=delivery.task_id, state=run, limit=cmd.time_limit, spans=spans,
                                  inline_queues=queues, **kwargs)
                return nxt if isinstance(nxt, Transition) else None

            t = follow(rt, done, inline, run_one)
        if t is not None:
            rt.loop.publish(t)
    return None


def _handle_one(rt: Runtime, st: StepTask, saga_id: str, step: str, delivery: Delivery, *, by: str, saga: str,
                kind: str, version: int, input: dict[str, Any], attempt: int = 1,
                results: dict[str, Any] | None = None, result: dict[str, Any] | None = None,
                error: dict[str, str] | None = None, saga_version: int | None = None, handoffs: int = 0,
                state: RunState | None = None, limit: float | None = None,
                spans: Attempts = UNTRACED,
                inline_queues: frozenset[str] | None = None) -> RetrySelf | HandOn | Transition | None:
    """One step message: its committed transition (to publish, or to follow inline), a `RetrySelf`,
    a `HandOn`, or None when there is nothing to publish. `by`: the message being handled, whose
    own every transition made while handling it is; `state`: the run as just committed (an inline
    step); `limit`: the soft time limit to arm here (an inline step: the broker's does not apply);
    `spans`: the delivery's attempt spans (`runtime.tracing`), this attempt's begun here.
    `saga_version` (the message's) does not decide, the run's own version does (its span shows it);
    `inline_queues`: the queues whose follow-ups this delivery runs inline (None: inline steps off)."""
    report = StepReport(st.name, st.queue, saga_id, step, saga, kind, version, input, delivery, by, attempt,
                        results, result, handoffs, inline_queues, error)

    def work(definition: Saga, run: RunState) -> tuple[Outcome, BaseException | None]:
        ctx = StepContext(saga_id=saga_id, saga_type=saga, step=step, kind=kind, attempt=attempt,
                          task_id=delivery.task_id, input=input, results=results or {}, result=result,
                          error=StepError.from_message(error), saga_version=run.saga_version)

        def opened(ctx: StepContext, data: dict[str, Any]) -> tuple[StepContext, dict[str, Any]]:
            # the one place a sealed field is opened: in memory, for the step function only (a key
            # this process does not hold fails the attempt, as the function raising would)
            clear = open_input(rt.sealer, data)
            return replace(ctx, input=clear, results=open_input(rt.sealer, ctx.results),
                           result=open_input(rt.sealer, ctx.result), item=definition.item(step, clear)), clear

        task = Opening(st.name, st.queue, st.fn, st.signature, opened)
        if limit is None:
            outcome, failure = run_function(definition, task, ctx, input)
        else:
            with soft_limit(limit):
                outcome, failure = run_function(definition, task, ctx, input)
        if failure is not None:
            spans.failed(failure)
        if isinstance(outcome, ActionSucceeded):  # sealed before it is recorded or sent on
            outcome = replace(outcome, result=seal_result(rt.sealer, definition.step(step), outcome.result))
        return outcome, failure

    spans.begin(saga_id=saga_id, saga_type=saga, saga_version=saga_version, step=step, side=kind, attempt=attempt,
                task=st.name, task_id=delivery.task_id)
    done = rt.loop.step(report, work, state=state, after_commit=crash_points.after_commit(step))
    t = done.transition
    if t is None:
        return done.hand_on
    if state is None and done.error is not None and len(t.commands) == 1:
        cmd = t.commands[0]
        if cmd.step == step and cmd.kind == kind and cmd.task_id == delivery.task_id:
            # A retry of this very task: Celery's own retry (same task id, countdown, retries + 1).
            args, kwargs = message_for(t.after, cmd)
            countdown = max(0.0, (cmd.eta - rt.clock()).total_seconds()) if cmd.eta else 0.0
            return RetrySelf(args, kwargs, countdown, done.error, rt.tracing.message_headers(t.after, cmd) or None)
    return t


@dataclass(frozen=True)
class Opening(StepTask):
    """A step task called with its message's sealed fields opened first (`runtime.sealing`)."""

    open: Callable[[StepContext, dict[str, Any]], tuple[StepContext, dict[str, Any]]] | None = None

    def __call__(self, ctx: StepContext, data: dict[str, Any]) -> Any:
        if self.open is not None:
            ctx, data = self.open(ctx, data)
        return super().__call__(ctx, data)


# ------------------------------------------------------------------ the Celery task


def delivery_of(task: Task) -> Delivery:
    req = task.request
    return Delivery(task_id=req.id, redelivered=bool((req.delivery_info or {}).get("redelivered")),
                    retries=req.retries or 0, kwargs=dict(req.kwargs or {}), headers=trace_headers(req) or None)


def make_step_task(app: Celery, st: StepTask) -> Task:
    """Register `st` on `app` as the Celery task of its name, on its queue, acknowledged late."""

    def body(self: Task, *args: Any, **kwargs: Any) -> None:
        started = time.monotonic()
        message = parse_step_message(args, kwargs)
        if isinstance(message, str):  # would fail on every delivery: kept, acknowledged
            raw = json.dumps({"task": st.name, "args": args, "kwargs": kwargs}, default=repr)
            dead_letter_message(raw, message, task=st.name, queue=st.queue, headers={"task_id": self.request.id})
            return
        rt = get_runtime()
        inline = None
        if rt.settings.inline_steps:
            hard = (self.request.timelimit or (None, None))[0]
            inline = budget_for(consumed_queues(self.app, st.queue), hard, started, rt.settings.inline_max_steps)
        retry = handle_step(rt, st, message.saga_id, message.step, delivery_of(self), inline=inline,
                            **message.handle_kwargs())
        if isinstance(retry, HandOn):  # published before this message is acked: a crash leaves both
            hard, soft = self.request.timelimit or (None, None)
            self.apply_async(args=retry.args, kwargs=retry.kwargs, task_id=self.request.id, queue=st.queue,
                             countdown=retry.countdown, time_limit=hard, soft_time_limit=soft,
                             headers=trace_headers(self.request) or None)
        elif retry is not None:
            raise self.retry(args=retry.args, kwargs=retry.kwargs, countdown=retry.countdown, exc=retry.error,
                             **({"headers": retry.headers} if retry.headers else {}))

    body.__name__ = st.fn.__name__
    body.__doc__ = st.fn.__doc__
    return app.task(bind=True, name=st.name, queue=st.queue, ignore_result=True, typing=False,
                    **DELIVERY_OPTIONS)(body)


__all__ = ["MAX_HANDOFFS", "Delivery", "HandOn", "RetrySelf", "handle_step", "handoff_delay", "make_step_task"]
