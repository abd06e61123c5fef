"""What can happen to a run: the outcomes the engine decides on. Pure frozen values."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflows.core.run import RunStatus, Signal


@dataclass(frozen=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True)
class Outcome:
    """Something that happened to a run. `by` names who reported it (task id, 'sweeper', a person)."""


@dataclass(frozen=True)
class Started(Outcome):
    """Start the run. `cause`: what started it, when not a plain call (an event of a choreography:
    its flow, saga id, event id and type), recorded in `SagaStarted`."""

    cause: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ActionSucceeded(Outcome):
    step: str
    result: dict[str, Any]


@dataclass(frozen=True)
class ActionFailed(Outcome):
    step: str
    error: ErrorInfo
    retryable: bool
    countdown: float = 0.0
    """Seconds to wait before the next attempt, if the engine decides to retry."""


@dataclass(frozen=True)
class ActionTimedOut(Outcome):
    step: str
    reason: str


@dataclass(frozen=True)
class CompensationSucceeded(Outcome):
    step: str


@dataclass(frozen=True)
class CompensationFailed(Outcome):
    step: str
    error: ErrorInfo
    retryable: bool
    countdown: float = 0.0


@dataclass(frozen=True)
class WorkerLost(Outcome):
    """The step's message came back once too often: each delivery's worker died before it reported
    (`os._exit`, a segfault, the OOM killer). Its effect is unknown: compensated, never run again."""

    step: str
    kind: str
    """'action' or 'compensation'."""
    losses: int
    """Workers lost on this step's message (its redeliveries, counted in the database)."""


@dataclass(frozen=True)
class Cancel(Outcome):
    """Force compensation of a running saga (operator action or saga deadline)."""

    reason: str
    who: str = "operator"


@dataclass(frozen=True)
class Redispatch(Outcome):
    """Send a running step's message again, under a new version (its first message may be lost)."""

    step: str
    reason: str


@dataclass(frozen=True)
class Resume(Outcome):
    """Retry the stuck compensation of a FAILED saga (or a running step now); operator action."""

    step: str | None = None
    reason: str = ""
    who: str = "operator"


@dataclass(frozen=True)
class Schedule(Outcome):
    """Record a run to be started at `at` (by the sweeper, with `Started`)."""

    at: datetime
    cause: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SignalReceived(Outcome):
    """A signal for the run: consumed by the wait it matches, or kept until that wait begins."""

    signal: Signal


@dataclass(frozen=True)
class WaitTimedOut(Outcome):
    """A wait's deadline passed with no signal (the sweeper)."""

    step: str


@dataclass(frozen=True)
class ChildFinished(Outcome):
    """The child run of `Child` step `step` reached `status` (reported to the parent)."""

    step: str
    child_id: str
    status: RunStatus
    results: dict[str, Any] = field(default_factory=dict)
    """The child's results, by step name (a COMPLETED child's are the step's result)."""
    reason: str | None = None
    """The child's failure reason (COMPENSATED, FAILED)."""


@dataclass(frozen=True)
class Compensate(Outcome):
    """Undo a COMPLETED run through its own compensations, newest first (its parent is compensating)."""

    reason: str
    who: str = "parent"
