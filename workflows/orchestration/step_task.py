"""The step task: turn one step message into an outcome, and hand it to the decision loop.

The hot path is one message, one read and one atomic write per step: the task reads its run
(the guard: a stale or duplicate message does not run its function), runs the function, then,
in the same worker, the loop decides, commits and publishes the next step (`handle_step`).

Crash safety: every message is acknowledged late, after the transition committed and its
follow-up was published. A message redelivered after its transition committed finds the run
one version ahead and made by itself (`caused_by`), and re-publishes the follow-up derived
from the state (`commands_for`); each follow-up is checked against its own step's dispatch
(`is_current`), so a duplicate is harmless.

A follow-up step on the same queue, due now, runs in the same delivery instead of being
published (`orchestration/inline.py`): one read for the message, then one write per step.

`handle_step` is plain Python over the runtime (no Celery in it): the in-process test tier calls
it with a `Delivery` and a `RecordingDispatcher`. `make_step_task` wraps it as a Celery task.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
import traceback as tb
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from workflows.core.definition import Saga, definition_of, registry
from workflows.core.engine import commands_for, is_current
from workflows.core.errors import SagaNotFound, UnknownSaga
from workflows.core.state import (STARTED_BY, ActionFailed, ActionSucceeded, ActionTimedOut, ChildFinished, Command,
                                  CompensationFailed, CompensationSucceeded, DeadLetter, Dispatch, ErrorInfo,
                                  HistoryEvent, MessageInfo, Order, Outcome, RunState, Transition, WorkerLost)
from workflows.core.steps import StepContext, StepError, StepTask, step_tasks
from workflows.orchestration.inline import InlineBudget, budget_for, holding_pool_soft_limit, soft_limit
from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.delivery import DELIVERY_OPTIONS
from workflows.orchestration.message import parse_step_message
from workflows.runtime.dispatch import message_for, short_repr
from workflows.runtime.poison import dead_letter_message
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


def handle_step(rt: Runtime, st: StepTask, saga_id: str, step: str, delivery: Delivery, *,
                inline: InlineBudget | None = None, **message: Any) -> RetrySelf | HandOn | None:
    """Check, run the step function, then load → decide → commit → publish. Returns a `RetrySelf`
    when the next attempt is this message again (the caller raises Celery's retry), a `HandOn` when
    this worker does not hold the run's saga version (the caller sends the message on).

    With an `inline` budget, a follow-up step on the same queue runs here, in this delivery,
    instead of being published (`orchestration.inline`); each inline step is committed on its own."""
    done = _handle_one(rt, st, saga_id, step, delivery, by=delivery.task_id, **message)
    if not isinstance(done, Transition):
        return done
    t = done
    if inline is not None:
        with holding_pool_soft_limit(), _flushing_events(rt):
            while (follow := inline.next_step(t)) is not None:
                cmd, next_task = follow
                rt.loop.publish(t, inline=cmd)  # all but the step run here: dead letters, children, orders
                _, kwargs = message_for(t.after, cmd)
                log.info("running %s %s inline", cmd.task, cmd.step,
                         extra={"saga_id": saga_id, "step": cmd.step, "task_id": cmd.task_id})
                with _announced(rt, next_task, cmd, saga_id, kwargs):
                    nxt = _handle_one(rt, next_task, saga_id, cmd.step, Delivery(cmd.task_id, kwargs=kwargs),
                                      by=delivery.task_id, state=t.after, limit=cmd.time_limit, **kwargs)
                if not isinstance(nxt, Transition):
                    return None  # stale (a cancel, a timeout came in between): nothing to follow up
                t = nxt
    rt.loop.publish(t)
    return None


def _handle_one(rt: Runtime, st: StepTask, saga_id: str, step: str, delivery: Delivery, *, by: str, saga: str,
                kind: str, version: int, input: dict[str, Any], attempt: int = 1,
                results: dict[str, Any] | None = None, result: dict[str, Any] | None = None,
                error: dict[str, str] | None = None,
                saga_version: int | None = None, handoffs: int = 0, state: RunState | None = None,
                limit: float | None = None) -> RetrySelf | HandOn | Transition | None:
    """One step message: its committed transition (to publish, or to follow inline), a `RetrySelf`,
    or None when there is nothing to publish. `by`: the message being handled, whose own every
    transition made while handling it is; `state`: the run as just committed (an inline step);
    `limit`: the soft time limit to arm here (an inline step: the broker's does not apply)."""
    if saga not in registry:  # a worker deployed without this saga: keep the message, never drop it
        unknown = UnknownSaga(f"unknown saga {saga!r} (registered: {', '.join(registry.names()) or 'none'})")
        _dead_letter_message(rt, st, saga_id, step, kind, delivery, ErrorInfo("UnknownSaga", str(unknown)))
        return None
    try:
        run = state or rt.store.load(saga_id)  # the snapshot the outcome is decided on, if still current then
    except SagaNotFound as e:  # a worker on another database, or a run deleted: keep the message too
        _dead_letter_message(rt, st, saga_id, step, kind, delivery, ErrorInfo("SagaNotFound", str(e)))
        return None
    if not registry.has(saga, run.saga_version):  # the run's own version decides, not the message's
        return _hand_on(rt, run, step, kind, delivery, handoffs)
    definition = definition_of(run)
    loop = rt.loop
    dispatch = Dispatch(step, kind, delivery.task_id, attempt)
    if not is_current(run, step, kind, delivery.task_id, attempt):
        # Stale (a duplicate, or overtaken by a timeout/cancel/retry) or our own commit redelivered:
        # the step must not run again.
        applied = loop.ignore_stale(run, by=by, step=step, what=f"{kind} (not run)", own=run.caused_by == by,
                                    message_version=version, attempt=attempt)
        if applied.own_commit:
            found_own_commit(rt, definition, applied.state, delivery, step, st.queue)
        return None

    message = MessageInfo(task_name=st.name, queue=st.queue, args=[saga_id, step],
                          kwargs={"saga": saga, "kind": kind, "version": version,
                                  "saga_version": run.saga_version, "input": input,
                                  "attempt": attempt, "results": results, "result": result,
                                  **({"error": error} if error is not None else {})},
                          headers={"task_id": delivery.task_id, "retries": delivery.retries})
    if delivery.redelivered and not _may_run_again(rt, definition, run, dispatch, message):
        return None

    ctx = StepContext(saga_id=saga_id, saga_type=saga, step=step, kind=kind, attempt=attempt,
                      task_id=delivery.task_id, input=input, results=results or {}, result=result,
                      error=StepError.from_message(error),
                      item=definition.item(step, input), saga_version=run.saga_version)
    if limit is None:
        outcome, raised = _run_function(definition, st, ctx, input)
    else:
        with soft_limit(limit):
            outcome, raised = _run_function(definition, st, ctx, input)
    applied = loop.commit(definition, saga_id, outcome, by=by, dispatch=dispatch, state=run, message=message)
    _test_crash_point(step)
    t = applied.transition
    if t is None:
        if applied.own_commit and state is None:
            found_own_commit(rt, definition, applied.state, delivery, step, st.queue)
        return None
    own = [c for c in t.commands if c.step == step and c.kind == kind and c.task_id == delivery.task_id
           and state is None]
    if own and raised is not None and len(t.commands) == 1:
        # A retry of this very task: Celery's own retry (same task id, countdown, retries + 1).
        cmd = own[0]
        args, kwargs = message_for(t.after, cmd)
        countdown = max(0.0, (cmd.eta - rt.clock()).total_seconds()) if cmd.eta else 0.0
        return RetrySelf(args, kwargs, countdown, raised)
    return t


@contextmanager
def _announced(rt: Runtime, st: StepTask, cmd: Command, saga_id: str, kwargs: dict[str, Any]) -> Iterator[None]:
    """Flower's view of an inline step: the task events a worker sends for a message it runs (with
    task events on), under the step's own task id, its saga id first in its arguments."""
    events = _events(rt)
    if events is None:
        yield
        return
    fields = {"uuid": cmd.task_id}  # the dispatcher adds its hostname and pid
    started = time.monotonic()
    _send_event(events, "task-received", name=cmd.task, args=repr([saga_id, cmd.step]),
                kwargs=short_repr(kwargs), retries=0, eta=None, expires=None, **fields)
    _send_event(events, "task-started", **fields)
    outcome = "task-succeeded"
    try:
        yield
    except BaseException:
        outcome = "task-failed"
        raise
    finally:
        _send_event(events, outcome, result="inline", runtime=time.monotonic() - started, **fields)


_EVENTS: dict[int, Any] = {}
"""This process's event dispatcher for inline steps, by pid (a forked pool process makes its own).
It buffers task events (as the worker's own dispatcher does) and sends them as one message when
the delivery's inline steps are done (`_flushing_events`)."""


@contextmanager
def _flushing_events(rt: Runtime) -> Iterator[None]:
    try:
        yield
    finally:
        events = _EVENTS.get(os.getpid())
        if events is not None:
            try:
                events.flush(errors=False, groups=True)
            except Exception as e:  # events are for watching: never fail a step for them
                log.warning("task events of inline steps not sent: %s", e)


def _events(rt: Runtime) -> Any:
    app = rt.app
    if app is None or not app.conf.worker_send_task_events:
        return None
    pid = os.getpid()
    if pid not in _EVENTS:
        from celery import current_task

        hostname = getattr(getattr(current_task, "request", None), "hostname", None) or socket.gethostname()
        _EVENTS.clear()
        _EVENTS[pid] = app.events.Dispatcher(app.connection_for_write(), hostname=hostname, enabled=True,
                                             buffer_group=["task"], buffer_limit=1000)
    return _EVENTS[pid]


def _send_event(events: Any, type_: str, **fields: Any) -> None:
    try:
        events.send(type_, **fields)
    except Exception as e:  # events are for watching: never fail a step for them
        log.warning("task event %s of an inline step not sent: %s", type_, e)


def _may_run_again(rt: Runtime, saga: Saga, run: RunState, d: Dispatch, message: MessageInfo, *,
                   first: bool = False) -> bool:
    """A redelivered message: its worker died (or the broker restored it). Counted in the database
    before the function runs again, so a step that kills every worker it runs on is given up (the
    engine's `WorkerLost`: dead-lettered, compensated as unknown), not looped. False: do not run.
    `first`: count the loss only if none is counted yet (`_lost_inline`)."""
    lost = rt.store.count_redelivery(run.saga_id, d.step, d.kind, d.task_id, d.attempt, by=d.task_id, now=rt.clock(),
                                     first=first)
    if lost is None:
        # the step moved on since the read: this copy must not run; or (`first`) another copy of the
        # message that dispatched it counted this loss: it may be sent again (its guard drops a duplicate)
        return first
    log.warning("step %s (%s) delivered again: worker lost %d time(s)", d.step, d.kind, lost,
                extra={"saga_id": run.saga_id})
    if not gives_up(saga, run, d.step, d.kind, lost):
        return True
    applied = rt.loop.commit(saga, run.saga_id, WorkerLost(d.step, d.kind, lost), by=d.task_id, dispatch=d,
                             state=run, message=message)
    if applied.transition is not None:
        rt.loop.publish(applied.transition)
    return False


def gives_up(saga: Saga, run: RunState, step: str, kind: str, lost: int) -> bool:
    """Has the step used up its policy's attempts, counting each lost worker as one? (With
    `max_attempts` 3 a step whose function kills its worker runs 3 times, then is dead-lettered.)"""
    s, declared = run.step(step), saga.step(step)
    if kind == "action":
        return s.attempts + lost >= declared.retry.max_attempts
    return s.compensation_attempts + lost >= declared.compensation_retry.max_attempts


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


def found_own_commit(rt: Runtime, saga: Saga, run: RunState, delivery: Delivery, step: str | None,
                     queue: str | None = None) -> None:
    """This message's transition already committed: re-publish the follow-up only if it may be missing.

    The copy that committed publishes before it is acked. So only a redelivery (that copy died)
    or a retry of the same message (its publish failed) can owe the follow-up; a fresh duplicate
    leaves it to the copy that committed, and duplicates do not multiply along the saga.
    """
    now = rt.clock()
    if delivery.redelivered or delivery.retries > 0:
        # Only what this message's own transition dispatched (its history says so): the other
        # messages in flight (a group's other branches) were published by whoever dispatched them.
        history = rt.store.history(run.saga_id)
        mine = {(e.step, e.detail.get("task_id")) for e in history
                if e.type in ("StepDispatched", "CompensationDispatched") and e.detail.get("by") == delivery.task_id}
        cmds = tuple(c for c in commands_for(saga, run, rt.timing) if (c.step, c.task_id) in mine)
        if delivery.redelivered and queue is not None and rt.settings.inline_steps:
            cmds = tuple(c for c in cmds if not _lost_inline(rt, saga, run, c, queue))
        for cmd in cmds:
            log.warning("re-publishing %s for step %s", cmd.task, cmd.step, extra={"saga_id": run.saga_id})
            rt.dispatcher.send_step(run, cmd)
        _recover_children(rt, run, [e.detail["child_id"] for e in history
                                    if e.type == "ChildStarted" and e.detail.get("by") == delivery.task_id])
        rt.store.record(run.saga_id, HistoryEvent("FollowUpRepublished", step, None, {
            "run_version": run.version, "redelivered": delivery.redelivered, "retries": delivery.retries,
            "task": cmds[0].task if cmds else None, "steps": [c.step for c in cmds]}), by=delivery.task_id, now=now)
    else:
        log.warning("duplicate of %s for step %s ignored", delivery.task_id, step, extra={"saga_id": run.saga_id})
        rt.store.record(run.saga_id, HistoryEvent("DuplicateIgnored", step, None, {"run_version": run.version}),
                        by=delivery.task_id, now=now)


def _lost_inline(rt: Runtime, saga: Saga, run: RunState, cmd: Command, queue: str) -> bool:
    """A step this redelivered message (taken from `queue`) dispatched and would have run inline:
    its worker was most likely lost while running it, so that counts as a lost worker of the step,
    as a redelivery of its own message would (`_may_run_again`). True: it was given up (`WorkerLost`),
    not to be published again. (A crash between the commit and the inline run counts one loss too many.)
    Counted once however many copies of the message the broker hands out (`first`): the step ran
    inline at most once before it was published; later losses are its own message's redeliveries.
    (A retried step whose earlier attempt lost a worker is not counted here: one loss too few.)"""
    st = step_tasks.get(cmd.task)
    if st is None or st.queue != queue or cmd.eta is not None:
        return False
    args, kwargs = message_for(run, cmd)
    message = MessageInfo(task_name=cmd.task, queue=queue, args=args, kwargs=kwargs, headers={"task_id": cmd.task_id})
    attempt = kwargs["attempt"]
    return not _may_run_again(rt, saga, run, Dispatch(cmd.step, cmd.kind, cmd.task_id, attempt), message, first=True)


def _recover_children(rt: Runtime, run: RunState, started: list[str]) -> None:
    """What a transition that committed and was not published owed to other runs: the first
    messages of the children it started (if nothing reported on them since), and a settled child's
    report to its parent. Duplicates are harmless: each message and report meets its step's guard."""
    for cid in started:
        child = rt.store.load(cid)
        if child.caused_by == STARTED_BY and registry.has(child.saga_type, child.saga_version):
            # its own version decides; one this worker does not hold is the sweeper's (its first step's deadline)
            for cmd in commands_for(definition_of(child), child, rt.timing):
                rt.dispatcher.send_step(child, cmd)
    if run.parent_id is not None and run.parent_step is not None and run.status.terminal:
        rt.loop.deliver(Order(run.parent_id, ChildFinished(run.parent_step, run.saga_id, run.status, run.results(),
                                                           run.failure_reason)), by=f"saga:{run.saga_id}")


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
            inline = budget_for(st.queue, hard, started, rt.settings.inline_max_steps)
        retry = handle_step(rt, st, message.saga_id, message.step, delivery_of(self), inline=inline,
                            **message.handle_kwargs())
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
