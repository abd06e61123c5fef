"""Lost workers: a redelivered step message is counted before its function runs again.

A message the broker hands out again (its worker died, or the broker restored it) is counted in
the database (`saga_steps.redeliveries`, a `StepRedelivered` history row) before the function
runs again, so a step that kills every worker it runs on is given up (the engine's `WorkerLost`:
dead-lettered, compensated as unknown), not looped. Each lost worker counts as one failed attempt
of the step's retry policy (`core.retry.retry_verdict`).
"""
from __future__ import annotations

import logging

from workflows.core.definition import Saga
from workflows.core.retry import RetryVerdict, retry_verdict
from workflows.core.run import Side
from workflows.core.state import Command, Dispatch, MessageInfo, RunState, WorkerLost
from workflows.core.steps import step_tasks
from workflows.runtime.dispatch import message_for
from workflows.runtime.loop_port import LoopPort

log = logging.getLogger("workflows.orchestration")


def may_run_again(loop: LoopPort, saga: Saga, run: RunState, d: Dispatch, message: MessageInfo, *,
                  first: bool = False) -> bool:
    """Count the loss of a redelivered message's worker; False: do not run it (the step moved on,
    or it was given up: `WorkerLost` decided, committed and published here). `first`: count the
    loss only if none is counted yet (`lost_inline`)."""
    lost = loop.store.count_redelivery(run.saga_id, d.step, d.kind, d.task_id, d.attempt, by=d.task_id,
                                       now=loop.clock(), first=first)
    if lost is None:
        # the step moved on since the read: this copy must not run; or (`first`) another copy of the
        # message that dispatched it counted this loss: it may be sent again (its guard drops a duplicate)
        return first
    log.warning("step %s (%s) delivered again: worker lost %d time(s)", d.step, d.kind, lost,
                extra={"saga_id": run.saga_id})
    if not gives_up(saga, run, d.step, d.kind, lost):
        return True
    loop.apply(saga, run.saga_id, WorkerLost(d.step, d.kind, lost), by=d.task_id, dispatch=d, state=run,
               message=message)
    return False


def gives_up(saga: Saga, run: RunState, step: str, kind: str, lost: int) -> bool:
    """Has the step used up its policy's attempts, counting each lost worker as one? (With
    `max_attempts` 3 a step whose function kills its worker runs 3 times, then is dead-lettered.)"""
    s, side = run.step(step), Side(kind)
    declared = saga.plan.node(step).policy(side)
    if declared is None:  # no message of that side to run again
        return True
    attempts = (s.attempts if side is Side.ACTION else s.compensation_attempts) + lost
    return retry_verdict(declared.retry, attempts) is not RetryVerdict.RETRY


def lost_inline(loop: LoopPort, saga: Saga, run: RunState, cmd: Command, queues: frozenset[str]) -> bool:
    """A step this redelivered message dispatched and would have run inline (its queue one of `queues`):
    its worker was most likely lost while running it, so that counts as a lost worker of the step,
    as a redelivery of its own message would (`may_run_again`). True: it was given up (`WorkerLost`),
    not to be published again. (A crash between the commit and the inline run counts one loss too many.)
    Counted once however many copies of the message the broker hands out (`first`): the step ran
    inline at most once before it was published; later losses are its own message's redeliveries.
    (A retried step whose earlier attempt lost a worker is not counted here: one loss too few.)"""
    st = step_tasks.get(cmd.task)
    if st is None or st.queue not in queues or cmd.eta is not None:
        return False
    args, kwargs = message_for(run, cmd)
    message = MessageInfo(task_name=cmd.task, queue=st.queue, args=args, kwargs=kwargs,
                          headers={"task_id": cmd.task_id})
    attempt = kwargs["attempt"]
    return not may_run_again(loop, saga, run, Dispatch(cmd.step, cmd.kind, cmd.task_id, attempt), message, first=True)
