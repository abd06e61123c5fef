"""The orchestrator: where a decision becomes a message.

The hot path is one message, one read and one atomic write per step: a step task reads its
run, runs its function, then, in the same worker, records the outcome, lets the engine decide
and publishes the next step (`run_step`). `start_saga` records a run with its first step
dispatched and publishes that step; recovery (`saga.sweep`) and operator actions call
`apply_and_publish`.

Crash safety: every message is acknowledged late, after the transition committed and its
follow-up was published. A message redelivered after its transition committed finds the run
one version ahead and made by itself (`caused_by`), and re-publishes the follow-up derived
from the state (`command_for`); the follow-up's own version check makes a duplicate harmless.
"""
from __future__ import annotations

import logging
import os
import signal
import traceback as tb
from datetime import datetime, timezone
from typing import Any

import kombu.exceptions
import sqlalchemy.exc
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from kombu import Queue

from workflows.core.definition import Saga, registry
from workflows.core.errors import SagaNotFound, UnknownSaga
from workflows.core.engine import (ActionFailed, ActionSucceeded, ActionTimedOut, Command, CompensationFailed,
                     CompensationSucceeded, ErrorInfo, Outcome, RunState, Transition, command_for)
from workflows.runtime.container import DEAD_LETTER_QUEUE, ORCHESTRATOR_QUEUE, Runtime, get_runtime
from workflows.core.steps import StepContext, StepTask, step_tasks
from workflows.store.sql import Applied, BeforeCommit, MessageInfo

log = logging.getLogger("workflows.orchestrator")

HARD_LIMIT_GRACE = 5.0
"""Seconds between a step's soft time limit (raises in the task) and its hard one (kills it)."""


# ------------------------------------------------------------------ publishing


def message_for(run: RunState, cmd: Command) -> tuple[list[Any], dict[str, Any]]:
    """The arguments of a step message: saga id first (Flower shows and searches it)."""
    s = run.step(cmd.step)
    kwargs: dict[str, Any] = {"saga": run.saga_type, "kind": cmd.kind, "version": cmd.version,
                              "input": run.input}
    if cmd.kind == "action":
        kwargs["results"] = {k: v for k, v in run.results().items() if run.step(k).index < s.index}
        kwargs["attempt"] = s.attempts + 1
    else:
        kwargs["result"] = s.result
        kwargs["attempt"] = s.compensation_attempts + 1
    return [run.saga_id, cmd.step], kwargs


def publish_command(rt: Runtime, run: RunState, cmd: Command) -> None:
    args, kwargs = message_for(run, cmd)
    rt.app.send_task(cmd.task, args=args, kwargs=kwargs, task_id=cmd.task_id, queue=rt.queue_for(cmd.task),
                     eta=cmd.eta, soft_time_limit=cmd.time_limit, time_limit=cmd.time_limit + HARD_LIMIT_GRACE)
    log.info("dispatched %s %s", cmd.task, cmd.step, extra={"saga_id": run.saga_id, "step": cmd.step})


def dead_letter_publisher(rt: Runtime, message: MessageInfo | None):  # type: ignore[no-untyped-def]
    """An `on_dead_letter` hook: copy a dead letter to the broker's dead-letter queue.

    Published inside the transaction, before commit: if the commit then fails, the message is
    delivered again and dead-lettered again (a duplicate in the queue, never a loss).
    """

    def hook(_session: Any, t: Transition, dl_id: str) -> None:
        dl = t.dead_letter
        assert dl is not None, "called only for a transition that writes a dead letter"
        publish_dead_letter(rt, dl_id, message or MessageInfo(dl.task, None, [t.after.saga_id, dl.step], {}, {}),
                            saga_id=t.after.saga_id, step=dl.step, kind=dl.kind, exception=str(dl.error),
                            attempts=dl.attempts, traceback=dl.error.traceback)

    return hook


def publish_dead_letter(rt: Runtime, dl_id: str, message: MessageInfo, *, saga_id: str | None, step: str | None,
                        kind: str, exception: str, attempts: int = 0, traceback: str = "") -> None:
    """Copy dead letter `dl_id` (the message `message` that will not be handled) to the broker's
    `dead_letter` queue, which no worker consumes."""
    body = {"dead_letter_id": dl_id, "saga_id": saga_id, "step": step, "kind": kind, "task": message.task_name,
            "queue": message.queue, "args": message.args, "kwargs": message.kwargs, "headers": message.headers,
            "attempts": attempts, "exception": exception, "traceback": traceback,
            "at": datetime.now(timezone.utc).isoformat()}
    queue = Queue(DEAD_LETTER_QUEUE, durable=True)
    with rt.app.producer_or_acquire() as producer:
        producer.publish(body, exchange="", routing_key=DEAD_LETTER_QUEUE, declare=[queue],
                         serializer="json", delivery_mode=2, retry=True)


def apply_and_publish(rt: Runtime, saga: Saga, saga_id: str, outcome: Outcome, *, by: str,
                      expected_version: int | None = None, message: MessageInfo | None = None,
                      before_commit: BeforeCommit | None = None, state: RunState | None = None) -> Applied:
    """Record `outcome` atomically (`SagaStore.apply`), then publish what it leads to: for the
    sweeper, operators and redrives (a step's own report goes through `run_step`).

    `before_commit` runs inside the transaction (after the dead-letter copy, if any); `state`
    is the run as the caller just read it (decided on if still current, saving a read). A
    commit found made "by" the same name is another sweep's or operator's, never this caller's
    own lost publish (they share their `by`): only a message can owe a follow-up
    (`found_own_commit`), so nothing is re-published here."""
    applied = rt.store.apply(saga, saga_id, outcome, by=by, expected_version=expected_version,
                             timing=rt.timing, message=message, on_dead_letter=dead_letter_publisher(rt, message),
                             before_commit=before_commit, state=state)
    if applied.transition is not None and applied.transition.command is not None:
        publish_command(rt, applied.transition.after, applied.transition.command)
    return applied


def republish(rt: Runtime, saga: Saga, run: RunState) -> Command | None:
    """Publish again the message `run` waits on (after a crash between commit and publish)."""
    cmd = command_for(saga, run, rt.timing)
    if cmd is not None:
        log.warning("re-publishing %s for step %s", cmd.task, cmd.step, extra={"saga_id": run.saga_id})
        publish_command(rt, run, cmd)
    return cmd


def found_own_commit(rt: Runtime, saga: Saga, run: RunState, task: Task, step: str | None) -> None:
    """This message's transition already committed: re-publish the follow-up only if it may be missing.

    The copy that committed publishes before it is acked. So only a redelivery (that copy died)
    or a retry of the same message (its publish failed) can owe the follow-up; a fresh duplicate
    leaves it to the copy that committed, and duplicates do not multiply along the saga.
    """
    req = task.request
    redelivered = bool((req.delivery_info or {}).get("redelivered"))
    if redelivered or (req.retries or 0) > 0:
        cmd = republish(rt, saga, run)
        rt.store.record(run.saga_id, "FollowUpRepublished", step=step, by=req.id, run_version=run.version,
                        redelivered=redelivered, retries=req.retries, task=cmd.task if cmd else None)
    else:
        log.warning("duplicate of %s for step %s ignored", task.name, step, extra={"saga_id": run.saga_id})
        rt.store.record(run.saga_id, "DuplicateIgnored", step=step, by=req.id, run_version=run.version)


def _test_crash_point(step: str) -> None:
    """Test only: SAGA_TEST_CRASH_AFTER_COMMIT=<step> kills this pool process right after the commit,
    before the follow-up is published; <step>:worker kills the whole worker (tests/test_crash_safety.py)."""
    target = os.environ.get("SAGA_TEST_CRASH_AFTER_COMMIT")
    if target and target.split(":")[0] == step:
        if target.endswith(":worker"):
            os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)


# ------------------------------------------------------------------ step tasks


def run_step(task: Task, st: StepTask, saga_id: str, step: str, *, saga: str, kind: str, version: int,
             input: dict[str, Any], attempt: int = 1, results: dict[str, Any] | None = None,
             result: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The body of every step task: check, run the function, record, advance."""
    rt = get_runtime()
    by = task.request.id
    try:
        definition = registry.get(saga)
    except UnknownSaga as e:  # a worker deployed without this saga: keep the message, never drop it
        _dead_letter_message(rt, st, saga_id, step, kind, task.request.kwargs, by, f"UnknownSaga: {e}")
        return None
    try:
        run = rt.store.load(saga_id)  # the snapshot the outcome is decided on, if still current then
    except SagaNotFound as e:  # a worker on another database, or a run deleted: keep the message too
        _dead_letter_message(rt, st, saga_id, step, kind, task.request.kwargs, by, f"SagaNotFound: {e}")
        return None
    if run.version != version:
        # Stale (a duplicate, or overtaken by a timeout/cancel) or our own commit redelivered:
        # the step must not run again.
        applied = rt.store.ignore_stale(run, version, by=by, step=step, what=f"{kind} (not run)")
        if applied.own_commit:
            found_own_commit(rt, definition, applied.state, task, step)
        return None

    ctx = StepContext(saga_id=saga_id, saga_type=saga, step=step, kind=kind, attempt=attempt, task_id=by,
                      input=input, results=results or {}, result=result)
    index = definition.index_of(step)
    policy = definition.steps[index].retry if kind == "action" else definition.steps[index].compensation_retry
    error: BaseException | None = None
    try:
        out = st.fn(ctx, input)
        value = _as_result(out, st.name)
    except SoftTimeLimitExceeded as exc:
        error = exc
        limit = definition.steps[index].timeout if kind == "action" else definition.steps[index].effective_compensation_timeout
        reason = f"exceeded its time limit of {limit:g}s"
        outcome: Outcome = (ActionTimedOut(step, reason) if kind == "action" else
                            CompensationFailed(step, ErrorInfo("TimeLimitExceeded", reason), True,
                                               policy.countdown(attempt)))
    except Exception as exc:  # the policy decides what is retryable
        error = exc
        info = ErrorInfo(type(exc).__name__, str(exc), tb.format_exc())
        retryable = policy.is_retryable(exc)
        countdown = policy.countdown(attempt)
        outcome = (ActionFailed(step, info, retryable, countdown) if kind == "action" else
                   CompensationFailed(step, info, retryable, countdown))
    else:
        outcome = ActionSucceeded(step, value) if kind == "action" else CompensationSucceeded(step)

    message = MessageInfo(task_name=st.name, queue=st.queue, args=[saga_id, step],
                          kwargs={"saga": saga, "kind": kind, "version": version, "input": input,
                                  "attempt": attempt, "results": results, "result": result},
                          headers={"task_id": by, "retries": task.request.retries})
    applied = rt.store.apply(definition, saga_id, outcome, by=by, expected_version=version, timing=rt.timing,
                             message=message, on_dead_letter=dead_letter_publisher(rt, message), state=run)
    _test_crash_point(step)
    t = applied.transition
    if t is None:
        if applied.own_commit:
            found_own_commit(rt, definition, applied.state, task, step)
        return None
    cmd = t.command
    if cmd is not None and cmd.step == step and cmd.kind == kind and cmd.task_id == by and error is not None:
        # A retry of this very task: Celery's own retry (same task id, countdown, retries + 1).
        args, kwargs = message_for(t.after, cmd)
        countdown = max(0.0, (cmd.eta - datetime.now(timezone.utc)).total_seconds()) if cmd.eta else 0.0
        raise task.retry(args=args, kwargs=kwargs, countdown=countdown, exc=error)
    if cmd is not None:
        publish_command(rt, t.after, cmd)
    return None


def _dead_letter_message(rt: Runtime, st: StepTask, saga_id: str, step: str, kind: str, kwargs: dict[str, Any],
                         by: str, exception: str) -> None:
    """Keep a step message no run can take (`exception` says why) as a dead letter, in the table and
    on the broker's `dead_letter` queue, instead of dropping it."""
    message = MessageInfo(task_name=st.name, queue=st.queue, args=[saga_id, step], kwargs=dict(kwargs or {}),
                          headers={"task_id": by})
    with rt.store.sessions.begin() as s:
        dl_id = rt.store.add_dead_letter(s, kind=kind, task_name=st.name, message=message, saga_id=saga_id,
                                         step=step, exception=exception)
        publish_dead_letter(rt, dl_id, message, saga_id=saga_id, step=step, kind=kind, exception=exception)
    log.error("step message dead-lettered: %s", exception, extra={"saga_id": saga_id, "step": step})


def _as_result(out: Any, name: str) -> dict[str, Any]:
    import json

    if out is None:
        return {}
    if not isinstance(out, dict):
        raise TypeError(f"step task {name!r} must return a dict or None, not {type(out).__name__}")
    try:
        return json.loads(json.dumps(out))
    except (TypeError, ValueError) as e:
        raise TypeError(f"step task {name!r} returned a result that is not JSON: {e}") from None


def make_step_task(app: Celery, st: StepTask) -> Task:
    def body(self: Task, saga_id: str, step: str, **kwargs: Any) -> dict[str, Any] | None:
        return run_step(self, st, saga_id, step, **kwargs)

    body.__name__ = st.fn.__name__
    body.__doc__ = st.fn.__doc__
    return app.task(bind=True, name=st.name, queue=st.queue, ignore_result=True, typing=False,
                    **DELIVERY_OPTIONS)(body)


INFRASTRUCTURE_ERRORS = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                         kombu.exceptions.OperationalError)
"""The database or broker was unreachable: the step's own outcome is not in question."""

DELIVERY_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "max_retries": None,
    # An outage of the database or broker retries the whole message (Celery's autoretry, with
    # backoff): its effects are idempotent and its transition is version-checked. Errors of the
    # step function itself never reach this: the saga's RetryPolicy handles them in run_step.
    "autoretry_for": INFRASTRUCTURE_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
}


# ------------------------------------------------------------------ orchestrator tasks


def register_tasks(app: Celery) -> None:
    for st in step_tasks.all():
        make_step_task(app, st)

    @app.task(bind=True, name="saga.sweep", queue=ORCHESTRATOR_QUEUE, acks_late=True, ignore_result=True)
    def sweep(self: Task) -> dict[str, int]:
        """Act on runs past a deadline: send a lost first step again, time out lost steps."""
        from workflows.operations.sweeper import sweep as run_sweep

        return run_sweep(get_runtime()).counts()

