"""Inline steps: the next step runs in the delivery that recorded the previous one, when it can.

When a step's transition dispatches exactly one message, for a step task on a queue this worker
consumes (the one it just took a message from, or any other of its `-Q` queues), with no
countdown, the worker runs that step itself instead of publishing it and waiting for the broker
to hand it back: the broker would hand it to a worker of that queue, and this is one. Each
inline step is a step like any other: it is dispatched in the history (its own task id), guarded
by `is_current`, committed in its own transition, with its own retry policy and idempotency key.
What it does not get from the broker it gets here:

* **its own soft time limit**, armed with `SIGALRM` for its run (Celery's soft limit of the
  message being handled is held off meanwhile: that limit belongs to the step already recorded);
* **a bound**: a step is run inline only if its time limit ends before the hard time limit of the
  message being handled, so the prefork pool never kills a step early and the message (still
  unacknowledged) never outlives the broker's visibility timeout; and at most `max_steps` in a row;
* **crash safety**: every transition made while handling one message is recorded as that
  message's own (`by` its task id). A worker killed between two inline steps redelivers the
  message; it finds the run ahead and made by itself, and re-publishes the step in flight, as a
  redelivery after any commit does (`runtime.recovery`): nothing committed is redone;
* **Flower visibility**: with task events on, `task-received`, `task-started` and
  `task-succeeded` (or `task-failed`) are sent for each inline step under its own task id, its
  saga id first in its arguments, as for a published step; a log line says it ran inline.

Which queues this worker consumes is read from the worker's own consumer configuration
(`consumed_queues`: Celery's `-Q` selection, inherited by every pool process), so a step whose
queue only a pool on another host consumes is always published to it. (A queue added or cancelled
later by a remote control command changes the main process's consumers, not this record: the
step then runs where it would not have been routed; what it runs and records is the same.)
A step elsewhere (a queue this worker does not consume, a countdown, a group of several
messages) is published as before. `SAGA_INLINE_STEPS=false` turns it off. `follow` is the loop over a delivery's inline
steps; their task events are `orchestration.inline_events`'.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from workflows.core.state import Command, RunState, Transition
from workflows.core.steps import StepTask, step_tasks
from workflows.orchestration.inline_events import announced, flushing
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import message_for

log = logging.getLogger("workflows.orchestration")

MARGIN = 1.0
"""Seconds an inline step's soft limit must end before the handled message's hard limit."""


@dataclass
class InlineBudget:
    """What the delivery being handled may still run inline."""

    queues: frozenset[str]
    """The queues this worker consumes (the handled message's among them)."""
    ends_at: float | None
    """Monotonic time of the handled message's hard time limit (None: no limit)."""
    max_steps: int = 16
    clock: Callable[[], float] = time.monotonic
    ran: int = field(default=0)

    def next_step(self, t: Transition) -> tuple[Command, StepTask] | None:
        """The one message of `t` to run here instead of publishing it, if there is one."""
        if self.ran >= self.max_steps or len(t.commands) != 1:
            return None
        cmd = t.commands[0]
        st = step_tasks.get(cmd.task)
        if st is None or st.queue not in self.queues or cmd.eta is not None:
            return None
        if self.ends_at is not None and self.clock() + cmd.time_limit + MARGIN > self.ends_at:
            return None
        self.ran += 1
        return cmd, st


def budget_for(queues: frozenset[str], hard_limit: float | None, started: float,
               max_steps: int) -> InlineBudget | None:
    """The budget of a message taken at `started` with hard limit `hard_limit` by a worker consuming
    `queues`, or None where an inline step's own soft limit cannot be armed (a thread that is not
    the main one)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        return None
    return InlineBudget(queues, started + hard_limit if hard_limit else None, max_steps)


def consumed_queues(app: Celery, queue: str) -> frozenset[str]:
    """The queues this worker process consumes, `queue` (the handled message's) among them: the
    app's consumer selection (`celery worker -Q`, or every declared queue without it), set up by
    the worker's main process before it forks its pool."""
    return frozenset(app.amqp.queues.consume_from) | {queue}


def _raise_soft_limit(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded("inline step time limit")


@contextmanager
def soft_limit(seconds: float) -> Iterator[None]:
    """Raise `SoftTimeLimitExceeded` in this (main) thread after `seconds`, as Celery's soft limit would."""
    previous = signal.signal(signal.SIGALRM, _raise_soft_limit)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def holding_pool_soft_limit() -> Iterator[None]:
    """Hold off the pool's soft-limit signal (SIGUSR1) of the message being handled: while inline
    steps run, that limit (of the step already recorded) must not raise in one of them."""
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(usr1, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(usr1, previous)


RunOne = Callable[[StepTask, Command, dict[str, Any], RunState], Transition | None]
"""Runs one inline step (its task, its command, its message's keyword arguments, the run as just
committed) through the decision loop: its committed transition, or None when there is nothing to
follow up."""


def follow(rt: Runtime, t: Transition, budget: InlineBudget, run_one: RunOne) -> Transition | None:
    """Run `t`'s follow-up steps here while `budget` allows, each committed on its own, publishing
    all the rest of each transition (dead letters, children, orders). The last transition, still
    to publish, or None when an inline step came to nothing to follow up (stale: a cancel, a
    timeout came in between)."""
    saga_id = t.after.saga_id
    with holding_pool_soft_limit(), flushing():
        while (next_step := budget.next_step(t)) is not None:
            cmd, next_task = next_step
            rt.loop.publish(t, inline=cmd)  # all but the step run here: dead letters, children, orders
            _, kwargs = message_for(t.after, cmd)
            log.info("running %s %s inline", cmd.task, cmd.step,
                     extra={"saga_id": saga_id, "step": cmd.step, "task_id": cmd.task_id})
            with announced(rt, cmd, saga_id, kwargs):
                nxt = run_one(next_task, cmd, kwargs, t.after)
            if nxt is None:
                return None
            t = nxt
    return t
