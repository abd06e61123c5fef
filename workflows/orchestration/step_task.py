"""The step task: turn one step message into an outcome, and hand it to the decision loop.

The hot path is one message, one read and one atomic write per step: the task reads its run
(the guard: a stale or duplicate message does not run its function), runs the function, then,
in the same worker, the loop decides, commits and publishes the next step (`handle_step`).

Crash safety: every message is acknowledged late, after the transition committed and its
follow-up was published. A message redelivered after its transition committed finds the run
one version ahead and made by itself (`caused_by`), and re-publishes the follow-up derived
from the state (`commands_for`); each follow-up is checked against its own step's dispatch
(`is_current`), so a duplicate is harmless.

`handle_step` is plain Python over the runtime (no Celery in it): the in-process test tier calls
it with a `Delivery` and a `RecordingDispatcher`. `make_step_task` wraps it as a Celery task.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import traceback as tb
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from workflows.core.definition import Saga, registry
from workflows.core.engine import commands_for, is_current
from workflows.core.errors import SagaNotFound, UnknownSaga
from workflows.core.state import (ActionFailed, ActionSucceeded, ActionTimedOut, CompensationFailed,
                                  CompensationSucceeded, DeadLetter, Dispatch, ErrorInfo, HistoryEvent, MessageInfo,
                                  Outcome, RunState)
from workflows.core.steps import StepContext, StepTask
from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.delivery import DELIVERY_OPTIONS
from workflows.runtime.dispatch import message_for
from workflows.store.base import ParkedStep

log = logging.getLogger("workflows.orchestration")


@dataclass(frozen=True)
class Delivery:
    """What the broker says about the message being handled."""

    task_id: str
    redelivered: bool = False
    """The broker handed it out before (its worker died, or it was restored)."""
    retries: int = 0
    """Celery retries of this message so far (a retry of the same task id)."""
    kwargs: dict[str, Any] | None = None
    """The raw keyword arguments, kept in a dead letter."""


@dataclass(frozen=True)
class HandOn:
    """This worker does not hold the run's saga version: send the same message again (same task
    id, `handoffs` one more) to the same queue after `countdown`, for a worker that holds it."""

    args: list[Any]
    kwargs: dict[str, Any]
    countdown: float


MAX_HANDOFFS = 20
"""Hand-offs of one message before it is parked: dropped, with a `saga_parked_steps` row and a
`StepParked` history row; the sweeper dispatches the step again once a live worker holds its version."""


def handoff_delay(handoffs: int) -> float:
    """Seconds before hand-off `handoffs + 1` is delivered: 0.5, 1, 1.5 ... at most 5."""
    return min(5.0, 0.5 * (handoffs + 1))


@dataclass(frozen=True)
class RetrySelf:
    """The next attempt is this very task again: Celery's own retry (same task id, a countdown)."""

    args: list[Any]
    kwargs: dict[str, Any]
    countdown: float
    error: BaseException


def handle_step(rt: Runtime, st: StepTask, saga_id: str, step: str, delivery: Delivery, *, saga: str, kind: str,
                version: int, input: dict[str, Any], attempt: int = 1, results: dict[str, Any] | None = None,
                result: dict[str, Any] | None = None, saga_version: int | None = None,
                handoffs: int = 0) -> RetrySelf | HandOn | None:
    """Check, run the step function, then load → decide → commit → publish. Returns a `RetrySelf`
    when the next attempt is this message again (the caller raises Celery's retry), a `HandOn` when
    this worker does not hold the run's saga version (the caller sends the message on)."""
    by = delivery.task_id
    if saga not in registry:  # a worker deployed without this saga: keep the message, never drop it
        unknown = UnknownSaga(f"unknown saga {saga!r} (registered: {', '.join(registry.names()) or 'none'})")
        _dead_letter_message(rt, st, saga_id, step, kind, delivery, ErrorInfo("UnknownSaga", str(unknown)))
        return None
    try:
        run = rt.store.load(saga_id)  # the snapshot the outcome is decided on, if still current then
    except SagaNotFound as e:  # a worker on another database, or a run deleted: keep the message too
        _dead_letter_message(rt, st, saga_id, step, kind, delivery, ErrorInfo("SagaNotFound", str(e)))
        return None
    if not registry.has(saga, run.saga_version):  # the run's own version decides, not the message's
        return _hand_on(rt, run, step, kind, delivery, handoffs)
    definition = registry.get(saga, run.saga_version)
    loop = rt.loop
    dispatch = Dispatch(step, kind, by, attempt)
    if not is_current(run, step, kind, by, attempt):
        # Stale (a duplicate, or overtaken by a timeout/cancel/retry) or our own commit redelivered:
        # the step must not run again.
        applied = loop.ignore_stale(run, by=by, step=step, what=f"{kind} (not run)", own=run.caused_by == by,
                                    message_version=version, attempt=attempt)
        if applied.own_commit:
            found_own_commit(rt, definition, applied.state, delivery, step)
        return None

    ctx = StepContext(saga_id=saga_id, saga_type=saga, step=step, kind=kind, attempt=attempt, task_id=by,
                      input=input, results=results or {}, result=result, item=definition.item(step, input),
                      saga_version=run.saga_version)
    outcome, error = _run_function(definition, st, ctx, input)
    message = MessageInfo(task_name=st.name, queue=st.queue, args=[saga_id, step],
                          kwargs={"saga": saga, "kind": kind, "version": version,
                                  "saga_version": run.saga_version, "input": input,
                                  "attempt": attempt, "results": results, "result": result},
                          headers={"task_id": by, "retries": delivery.retries})
    applied = loop.commit(definition, saga_id, outcome, by=by, dispatch=dispatch, state=run, message=message)
    _test_crash_point(step)
    t = applied.transition
    if t is None:
        if applied.own_commit:
            found_own_commit(rt, definition, applied.state, delivery, step)
        return None
    own = [c for c in t.commands if c.step == step and c.kind == kind and c.task_id == by]
    if own and error is not None and len(t.commands) == 1:
        # A retry of this very task: Celery's own retry (same task id, countdown, retries + 1).
        cmd = own[0]
        args, kwargs = message_for(t.after, cmd)
        countdown = max(0.0, (cmd.eta - rt.clock()).total_seconds()) if cmd.eta else 0.0
        return RetrySelf(args, kwargs, countdown, error)
    loop.publish(t)
    return None


def _run_function(saga: Saga, st: StepTask, ctx: StepContext,
                  data: dict[str, Any]) -> tuple[Outcome, BaseException | None]:
    """The step function's outcome, as the engine reads it (its policy decides what is retryable)."""
    step = saga.step(ctx.step)
    policy = step.retry if ctx.kind == "action" else step.compensation_retry
    try:
        value = _as_result(st.fn(ctx, data), st.name)
    except SoftTimeLimitExceeded as exc:
        limit = step.timeout if ctx.kind == "action" else step.effective_compensation_timeout
        reason = f"exceeded its time limit of {limit:g}s"
        if ctx.kind == "action":
            return ActionTimedOut(ctx.step, reason), exc
        return CompensationFailed(ctx.step, ErrorInfo("TimeLimitExceeded", reason), True,
                                  policy.countdown(ctx.attempt)), exc
    except Exception as exc:  # the policy decides what is retryable
        info = ErrorInfo(type(exc).__name__, str(exc), tb.format_exc())
        retryable, countdown = policy.is_retryable(exc), policy.countdown(ctx.attempt)
        if ctx.kind == "action":
            return ActionFailed(ctx.step, info, retryable, countdown), exc
        return CompensationFailed(ctx.step, info, retryable, countdown), exc
    if ctx.kind == "action":
        return ActionSucceeded(ctx.step, value), None
    return CompensationSucceeded(ctx.step), None


def found_own_commit(rt: Runtime, saga: Saga, run: RunState, delivery: Delivery, step: str | None) -> None:
    """This message's transition already committed: re-publish the follow-up only if it may be missing.

    The copy that committed publishes before it is acked. So only a redelivery (that copy died)
    or a retry of the same message (its publish failed) can owe the follow-up; a fresh duplicate
    leaves it to the copy that committed, and duplicates do not multiply along the saga.
    """
    now = rt.clock()
    if delivery.redelivered or delivery.retries > 0:
        # Only what this message's own transition dispatched (its history says so): the other
        # messages in flight (a group's other branches) were published by whoever dispatched them.
        mine = {(e.step, e.detail.get("task_id")) for e in rt.store.history(run.saga_id)
                if e.type in ("StepDispatched", "CompensationDispatched") and e.detail.get("by") == delivery.task_id}
        cmds = tuple(c for c in commands_for(saga, run, rt.timing) if (c.step, c.task_id) in mine)
        for cmd in cmds:
            log.warning("re-publishing %s for step %s", cmd.task, cmd.step, extra={"saga_id": run.saga_id})
            rt.dispatcher.send_step(run, cmd)
        rt.store.record(run.saga_id, HistoryEvent("FollowUpRepublished", step, None, {
            "run_version": run.version, "redelivered": delivery.redelivered, "retries": delivery.retries,
            "task": cmds[0].task if cmds else None, "steps": [c.step for c in cmds]}), by=delivery.task_id, now=now)
    else:
        log.warning("duplicate of %s for step %s ignored", delivery.task_id, step, extra={"saga_id": run.saga_id})
        rt.store.record(run.saga_id, HistoryEvent("DuplicateIgnored", step, None, {"run_version": run.version}),
                        by=delivery.task_id, now=now)


def _hand_on(rt: Runtime, run: RunState, step: str, kind: str, delivery: Delivery,
             handoffs: int) -> HandOn | None:
    """Never run, never dead-letter a step of a version this worker does not hold: hand it on to
    the same queue (for a worker that holds it) or, after `MAX_HANDOFFS`, park it on the run's
    record for the sweeper. The first hand-off and the parking are in the run's history."""
    now = rt.clock()
    detail = {"saga_version": run.saga_version, "kind": kind, "task_id": delivery.task_id,
              "worker_versions": registry.versions(run.saga_type), "handoffs": handoffs}
    extra = {"saga_id": run.saga_id, "step": step}
    if handoffs >= MAX_HANDOFFS:
        log.warning("step %s of %s version %d parked after %d hand-offs: no worker took it", step, run.saga_type,
                    run.saga_version, handoffs, extra=extra)
        rt.store.park_step(ParkedStep(run.saga_id, delivery.task_id, run.saga_type, run.saga_version, step, kind),
                           HistoryEvent("StepParked", step, None, detail), by=delivery.task_id, now=now)
        return None
    log.warning("step %s of %s version %d handed on: this worker holds versions %s", step, run.saga_type,
                run.saga_version, registry.versions(run.saga_type), extra=extra)
    if handoffs == 0:
        rt.store.record(run.saga_id, HistoryEvent("StepHandedOn", step, None, detail), by=delivery.task_id, now=now)
    kwargs = {**(delivery.kwargs or {}), "handoffs": handoffs + 1}
    return HandOn([run.saga_id, step], kwargs, handoff_delay(handoffs))


def _dead_letter_message(rt: Runtime, st: StepTask, saga_id: str, step: str, kind: str, delivery: Delivery,
                         error: ErrorInfo) -> None:
    """Keep a step message no run can take (`error` says why) as a dead letter, in the table and
    on the broker's `dead_letter` queue, instead of dropping it."""
    message = MessageInfo(task_name=st.name, queue=st.queue, args=[saga_id, step],
                          kwargs=dict(delivery.kwargs or {}), headers={"task_id": delivery.task_id})
    rt.loop.dead_letter(DeadLetter(rt.ids(), kind, step, st.name, 0, error, message), saga_id=saga_id)
    log.error("step message dead-lettered: %s", error, extra={"saga_id": saga_id, "step": step})


def _test_crash_point(step: str) -> None:
    """Test only: SAGA_TEST_CRASH_AFTER_COMMIT=<step> kills this pool process right after the commit,
    before the follow-up is published; <step>:worker kills the whole worker (tests/test_crash_safety.py)."""
    target = os.environ.get("SAGA_TEST_CRASH_AFTER_COMMIT")
    if target and target.split(":")[0] == step:
        if target.endswith(":worker"):
            os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)


def _as_result(out: Any, name: str) -> dict[str, Any]:
    if out is None:
        return {}
    if not isinstance(out, dict):
        raise TypeError(f"step task {name!r} must return a dict or None, not {type(out).__name__}")
    try:
        return json.loads(json.dumps(out))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as e:
        raise TypeError(f"step task {name!r} returned a result that is not JSON: {e}") from None


# ------------------------------------------------------------------ the Celery task


def delivery_of(task: Task) -> Delivery:
    req = task.request
    return Delivery(task_id=req.id, redelivered=bool((req.delivery_info or {}).get("redelivered")),
                    retries=req.retries or 0, kwargs=dict(req.kwargs or {}))


def make_step_task(app: Celery, st: StepTask) -> Task:
    """Register `st` on `app` as the Celery task of its name, on its queue, acknowledged late."""

    def body(self: Task, saga_id: str, step: str, **kwargs: Any) -> None:
        retry = handle_step(get_runtime(), st, saga_id, step, delivery_of(self), **kwargs)
        if isinstance(retry, HandOn):  # published before this message is acked: a crash leaves both
            hard, soft = self.request.timelimit or (None, None)
            self.apply_async(args=retry.args, kwargs=retry.kwargs, task_id=self.request.id, queue=st.queue,
                             countdown=retry.countdown, time_limit=hard, soft_time_limit=soft)
        elif retry is not None:
            raise self.retry(args=retry.args, kwargs=retry.kwargs, countdown=retry.countdown, exc=retry.error)

    body.__name__ = st.fn.__name__
    body.__doc__ = st.fn.__doc__
    return app.task(bind=True, name=st.name, queue=st.queue, ignore_result=True, typing=False,
                    **DELIVERY_OPTIONS)(body)


__all__ = ["Delivery", "HandOn", "RetrySelf", "handle_step", "make_step_task"]
