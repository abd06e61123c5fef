"""The saga engine: a pure function from (definition, run state, outcome) to a transition.

No Celery, no SQL, no clock, no random ids, no registry: `now`, `ids` and the definitions come
from the caller (`definition_of(run)` for the run's own, a resolver for its child steps'). The
runtime loads a `RunState`, asks `decide(...)` what follows, has the store write the returned
`Transition` atomically, then publishes its commands. `commands_for(...)` derives the messages a
run is waiting on from its state alone, which is how recovery re-publishes a message lost in a crash.

The decision is built in layers: decision.py (the rows, the stage runner, the compensation
walker, the stop of what is in flight), step_outcomes.py, wait_outcomes.py, child_outcomes.py.
"""
from __future__ import annotations

from datetime import datetime

from workflows.core.child_outcomes import ChildOutcomes
from workflows.core.decision import TRACEBACK_LIMIT, command, new_run
from workflows.core.run import RunState, Side, StepStatus
from workflows.core.saga import ChildDefinitions, Saga, declared_child
from workflows.core.state import (ActionFailed, ActionSucceeded, ActionTimedOut, Cancel, ChildFinished, Command,
                                  Compensate, CompensationFailed, CompensationSucceeded, IdSource, Outcome, Redispatch,
                                  Resume, Schedule, SignalReceived, Started, Timing, Transition, WaitTimedOut,
                                  WorkerLost)

__all__ = ["TRACEBACK_LIMIT", "command_for", "commands_for", "decide", "is_current", "new_run"]


def decide(saga: Saga, run: RunState, outcome: Outcome, now: datetime, ids: IdSource,
           timing: Timing = Timing(), children: ChildDefinitions = declared_child) -> Transition:
    """The transition `outcome` causes in `run` at time `now`, new ids drawn from `ids`. Raises
    `Ignored` if it causes none. `saga` is the run's own definition (its type and version, the
    caller's `definition_of`); `children` resolves a `Child` step to the definition its child
    starts on (the caller's registry; by default only children declared as `Saga` values)."""
    if run.saga_type != saga.name:
        raise ValueError(f"run {run.saga_id} is a {run.saga_type!r}, not a {saga.name!r}")
    if run.saga_version != saga.version:
        raise ValueError(f"run {run.saga_id} is on version {run.saga_version} of {saga.name!r}, not {saga.version}")
    d = ChildOutcomes(saga, run, now, ids, timing, children)
    match outcome:
        case Started(cause=cause):
            d.start(cause)
        case ActionSucceeded(step=step, result=result):
            d.action_succeeded(step, result)
        case ActionFailed():
            d.action_failed(outcome)
        case ActionTimedOut(step=step, reason=reason):
            d.action_timed_out(step, reason)
        case CompensationSucceeded(step=step):
            d.compensation_succeeded(step)
        case CompensationFailed():
            d.compensation_failed(outcome)
        case WorkerLost():
            d.worker_lost(outcome)
        case Cancel(reason=reason, who=who):
            d.cancel(reason, who)
        case Resume(step=step, reason=reason, who=who):
            d.resume(step, reason, who)
        case Redispatch(step=step, reason=reason):
            d.redispatch(step, reason)
        case Schedule(at=at, cause=cause):
            d.schedule(at, cause)
        case SignalReceived(signal=signal):
            d.signal_received(signal)
        case WaitTimedOut(step=step):
            d.wait_timed_out(step)
        case ChildFinished():
            d.child_finished(outcome)
        case Compensate(reason=reason, who=who):
            d.compensate(reason, who)
        case _:
            raise TypeError(f"unknown outcome {outcome!r}")
    return d.transition()


def is_current(run: RunState, step: str, kind: str, task_id: str, attempt: int) -> bool:
    """Is the message (`task_id`, attempt `attempt`) of side `kind` of `step` the one its step waits on?

    Each dispatch gives a step a new task id (a retry keeps it and counts an attempt), so a
    duplicate, a message overtaken by a timeout, a cancel or an operator's retry, and a report
    already recorded all find their step elsewhere. The run's version is not the test: the
    branches of a group report one after the other, each moving the version on."""
    try:
        s = run.step(step)
    except KeyError:
        return False
    if s.task_id != task_id:
        return False
    if kind == Side.ACTION:
        return s.status == StepStatus.RUNNING and s.attempts + 1 == attempt
    return s.status == StepStatus.COMPENSATING and s.compensation_attempts + 1 == attempt


def commands_for(saga: Saga, run: RunState, timing: Timing = Timing()) -> tuple[Command, ...]:
    """The messages `run` is waiting on, derived from its state alone (for recovery). A row with no
    message on its side (a child step waits on a run: the sweeper's `child_links`) has none."""
    out = []
    for s in run.steps:
        if s.status == StepStatus.RUNNING and not run.status.terminal:
            side = Side.ACTION
        elif s.status == StepStatus.COMPENSATING:
            side = Side.COMPENSATION
        else:
            continue
        if saga.plan.node(s.name).policy(side) is not None:
            out.append(command(saga, run, s, side, run.version))
    return tuple(out)


def command_for(saga: Saga, run: RunState, timing: Timing = Timing()) -> Command | None:
    """The first message `run` is waiting on (a line of steps waits on one at most)."""
    found = commands_for(saga, run, timing)
    return found[0] if found else None
