"""The vocabulary of a saga run: its state, what can happen to it, and what a decision writes.

Pure values (frozen dataclasses and enums): no Celery, no SQL, no clock. The engine (`engine.py`)
maps (definition, `RunState`, `Outcome`) to a `Transition`; the store writes exactly the rows a
`Transition` holds; the runtime publishes its commands and dead letters after the commit.

One import path for all of it: the state of a run (`run.py`), its outcomes (`outcomes.py`) and
what a decision writes (`transition.py`).
"""
from __future__ import annotations

from workflows.core.outcomes import (ActionFailed, ActionSucceeded, ActionTimedOut, Cancel, ChildFinished, Compensate,
                                     CompensationFailed, CompensationSucceeded, ErrorInfo, Outcome, Redispatch, Resume,
                                     Schedule, SignalReceived, Started, WaitTimedOut, WorkerLost)
from workflows.core.run import RunState, RunStatus, Side, Signal, StepState, StepStatus
from workflows.core.transition import (STARTED_BY, Command, DeadLetter, DeadLetterClosure, Dispatch, HistoryEvent,
                                       IdSource, Ignored, MessageInfo, Order, Timing, Transition)

__all__ = [
    "STARTED_BY", "ActionFailed", "ActionSucceeded", "ActionTimedOut", "Cancel", "ChildFinished", "Command",
    "Compensate", "CompensationFailed", "CompensationSucceeded", "DeadLetter", "DeadLetterClosure", "Dispatch",
    "ErrorInfo", "HistoryEvent", "IdSource", "Ignored", "MessageInfo", "Order", "Outcome", "Redispatch", "Resume",
    "RunState", "RunStatus", "Schedule", "Side", "Signal", "SignalReceived", "Started", "StepState", "StepStatus",
    "Timing", "Transition", "WaitTimedOut", "WorkerLost",
]
