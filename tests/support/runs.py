"""Driving the store the way a worker does, for tests: start a run, apply an outcome, publish.

Each goes through the runtime's decision loop (`DecisionLoop`), with the dispatcher given (a
`RecordingDispatcher` by default: nothing is published) and the real clock and ids.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from workflows.core.definition import Saga
from workflows.core.state import Command, Outcome, RunState, Timing, Transition
from workflows.runtime.container import Runtime, new_id, utcnow
from workflows.runtime.dispatch import Dispatcher, RecordingDispatcher
from workflows.runtime.loop import Applied, DecisionLoop
from workflows.store.base import Recorder


class Created:
    """What starting a run gave: its id and, when it was created, its first transition."""

    def __init__(self, saga_id: str, transition: Transition | None) -> None:
        self.saga_id, self.created, self.transition = saga_id, transition is not None, transition
        self.state: RunState | None = transition.after if transition is not None else None
        self.command: Command | None = transition.command if transition is not None else None


def loop(store: Recorder, dispatcher: Dispatcher | None = None, *, now: datetime | None = None,
         timing: Timing | None = None) -> DecisionLoop:
    """A decision loop over `store`; with `now`, its clock stands still there."""
    clock = (lambda: now) if now is not None else utcnow
    return DecisionLoop(store, dispatcher or RecordingDispatcher(), clock=clock, ids=new_id, timing=timing or Timing())


def create_run(store: Recorder, saga: Saga, data: dict[str, Any], *, now: datetime | None = None,
               timing: Timing | None = None, **kwargs: Any) -> Created:
    """Record a started run without publishing its first step (as if that message were lost)."""
    started = loop(store, now=now, timing=timing).start(saga, data, **kwargs)
    return Created(started.saga_id, started.transition)


def apply(store: Recorder, saga: Saga, saga_id: str, outcome: Outcome, *, now: datetime | None = None,
          **kwargs: Any) -> Applied:
    """Decide and commit `outcome` (at `now`), publishing nothing."""
    return loop(store, now=now).commit(saga, saga_id, outcome, **kwargs)


def publish_command(rt: Runtime, run: RunState, cmd: Command) -> None:
    """Publish one step message through the runtime's dispatcher (the broker, in a real runtime)."""
    rt.dispatcher.send_step(run, cmd)
