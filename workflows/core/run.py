"""The state of a saga run: its status, its steps' rows, the signals it keeps, and which side of a
step (its action or its compensation) a message is for. Pure frozen values and enums."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class Side(enum.StrEnum):
    """Which message of a step: its action or its compensation. The same strings as stored and sent
    (`"action"`, `"compensation"`), so a `Side` equals the value read from a row or a message."""

    ACTION = "action"
    COMPENSATION = "compensation"


class RunStatus(str, enum.Enum):
    SCHEDULED = "SCHEDULED"
    """Recorded, to be started by the sweeper at its `deadline_at` (`start_saga(start_at=...)`)."""
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    """Parked on a signal (a `Wait`): no message in flight, the wait's deadline in its step row."""
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"
    """Compensation is stuck: a compensation exhausted its retries. An operator must act."""

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.COMPENSATED, RunStatus.FAILED)


class StepStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    """A wait, parked until its signal or its deadline."""
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    """The action's outcome is unknown (time limit, lost worker, cancel): it is compensated."""
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class StepState:
    index: int
    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    compensation_attempts: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    task_id: str | None = None
    eta: datetime | None = None
    deadline_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class Signal:
    """A signal sent to a run (`operations.signals.signal`). Immutable once recorded."""

    id: str
    name: str
    payload: dict[str, Any]
    idempotency_key: str
    """Unique per saga: the same key again is the same signal (a no-op)."""
    who: str
    received_at: datetime
    consumed_by: str | None = None
    """The wait that consumed it; None while it is kept for a wait not begun yet."""


@dataclass(frozen=True)
class RunState:
    saga_id: str
    saga_type: str
    status: RunStatus
    version: int
    input: dict[str, Any]
    steps: tuple[StepState, ...]
    deadline_at: datetime | None = None
    """With a saga-level deadline, when the run is cancelled."""
    failure_reason: str | None = None
    caused_by: str | None = None
    """Who made the current version (store metadata; the engine does not read it)."""
    signals: tuple[Signal, ...] = ()
    """Signals received before their wait began, kept (not consumed yet), oldest first."""
    parent_id: str | None = None
    """A child run: the run whose `Child` step started it (its outcome is reported there)."""
    parent_step: str | None = None
    """A child run: the name of that step of the parent."""
    saga_version: int = 1
    """The version of the saga's definition the run started with (not `version`, the optimistic
    lock counter): every transition of the run is decided on that definition."""
    trace: str | None = None
    """The W3C `traceparent` of the run's current trace segment (its start, or the latest resumption
    after it parked), with tracing on: what the next segment links to. The engine does not read it."""

    def step(self, name: str) -> StepState:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def results(self) -> dict[str, dict[str, Any]]:
        """Results of the steps that succeeded, by step name, in step order."""
        return {s.name: s.result or {} for s in self.steps if s.status == StepStatus.SUCCEEDED}
