"""The vocabulary of a saga run: its state, what can happen to it, and what a decision writes.

Pure values (frozen dataclasses and enums): no Celery, no SQL, no clock. The engine (`engine.py`)
maps (definition, `RunState`, `Outcome`) to a `Transition`; the store writes exactly the rows a
`Transition` holds; the runtime publishes its commands and dead letters after the commit.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any


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

    def step(self, name: str) -> StepState:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def results(self) -> dict[str, dict[str, Any]]:
        """Results of the steps that succeeded, by step name, in step order."""
        return {s.name: s.result or {} for s in self.steps if s.status == StepStatus.SUCCEEDED}


# ---------------------------------------------------------------- outcomes


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
    pass


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


# ---------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Order:
    """An outcome for another run (a child, or the parent), applied by the runtime after this
    transition committed; the sweeper applies it again if a crash lost it (the engine's guards
    ignore a duplicate)."""

    saga_id: str
    outcome: Outcome


@dataclass(frozen=True)
class Command:
    """A message to publish: run `kind` ('action' | 'compensation') of step `step`."""

    kind: str
    step: str
    task: str
    task_id: str
    version: int
    """The run version it was dispatched at (for the record: what makes a message stale is its
    step's dispatch, `engine.is_current`, since branches of a group report at any version)."""
    eta: datetime | None = None
    time_limit: float = 0.0
    results_before: int = 0
    """The step sees the results of the steps whose index is lower: the stages before its own."""


@dataclass(frozen=True)
class Dispatch:
    """Which dispatch of a step a message is: what `engine.is_current` checks it against."""

    step: str
    kind: str
    task_id: str
    attempt: int


@dataclass(frozen=True)
class HistoryEvent:
    type: str
    step: str | None = None
    attempt: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MessageInfo:
    """What a dead letter keeps of the message that will not be handled."""

    task_name: str
    queue: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter a transition writes: its row, and (after commit) its copy on the broker."""

    id: str
    kind: str
    """'action', 'compensation' or 'event'."""
    step: str | None
    task: str
    attempts: int
    error: ErrorInfo
    message: MessageInfo | None = None
    """The message that ran out of retries; None: only its task and saga are known."""

    def message_or_default(self, saga_id: str | None) -> MessageInfo:
        return self.message or MessageInfo(self.task, None, [saga_id, self.step], {}, {})


@dataclass(frozen=True)
class DeadLetterClosure:
    """Open dead letters a transition resolves (REDRIVEN or DISCARDED), in its own atomic write.

    With `dead_letter_id`: that one, which must still be OPEN, or the whole transition is refused
    (two operators redriving one dead letter change the run once). With `step`: every OPEN dead
    letter of that kind of that step of the run (a resumed compensation closes its own)."""

    status: str
    resolution: str
    dead_letter_id: str | None = None
    step: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class Transition:
    """Everything one decision writes, in one atomic, version-checked write, and what follows it."""

    before: RunState
    after: RunState
    events: tuple[HistoryEvent, ...]
    commands: tuple[Command, ...] = ()
    """Messages to publish once the write committed."""
    dead_letters: tuple[DeadLetter, ...] = ()
    closures: tuple[DeadLetterClosure, ...] = ()
    signals: tuple[Signal, ...] = ()
    """Signals this transition records (consumed at once, or kept: `after.signals`)."""
    consumed: tuple[Signal, ...] = ()
    """Kept signals this transition consumes (`consumed_by` set): marked consumed in its write."""
    children: tuple[Transition, ...] = ()
    """Child runs this decision starts: each one's `Started` transition, written in the same
    atomic write as this one (its rows, its history), published after it."""
    orders: tuple[Order, ...] = ()
    """Outcomes for other runs (cancel or compensate a child, report to the parent), applied after
    the commit."""

    @property
    def command(self) -> Command | None:
        return self.commands[0] if self.commands else None

    @property
    def changed_steps(self) -> list[StepState]:
        return [a for b, a in zip(self.before.steps, self.after.steps) if a != b]

    def with_message(self, message: MessageInfo | None) -> Transition:
        """The same transition, its dead letters keeping `message` (the one that ran out of retries)."""
        if message is None or not self.dead_letters:
            return self
        return replace(self, dead_letters=tuple(replace(d, message=d.message or message) for d in self.dead_letters))

    def closing(self, *closures: DeadLetterClosure) -> Transition:
        """The same transition, also resolving `closures` (first, before the engine's own)."""
        if not closures:
            return self
        return replace(self, closures=(*closures, *self.closures))


STARTED_BY = "start"
"""`caused_by` of a run nothing has reported on since it was created: its first message may be lost."""

IdSource = Callable[[], str]
"""Where the engine gets new ids (task ids, dead letter ids): the caller's, so tests can fix them."""


class Ignored(Exception):
    """The outcome does not apply to the run's current state; nothing changes.

    `event` is what the history should say about it, if anything.
    """

    def __init__(self, reason: str, event: HistoryEvent | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event = event


@dataclass(frozen=True)
class Timing:
    """Seconds added to an attempt's time limit before the sweeper calls it lost."""

    dispatch_grace: float = 60.0


