"""What a decision writes and what follows it: a `Transition`, its commands, dead letters, orders
for other runs and history events; and what the engine needs from its caller (ids, timing)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from workflows.core.outcomes import ErrorInfo, Outcome
from workflows.core.run import RunState, Side, Signal, StepState


@dataclass(frozen=True)
class Order:
    """An outcome for another run (a child, or the parent), applied by the runtime after this
    transition committed; the sweeper applies it again if a crash lost it (the engine's guards
    ignore a duplicate)."""

    saga_id: str
    outcome: Outcome


@dataclass(frozen=True)
class Command:
    """A message to publish: run side `kind` (its action or its compensation) of step `step`."""

    kind: Side
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
class ProjectedRecord:
    """What one after-commit projection (`workflows.projections`) sends because of a transition: written
    in the transition's own atomic write as a pending row, sent after commit, then deleted; the sweeper
    sends the rows a crash left. Not the record: the run's rows are."""

    id: str
    """The dedup key, unique within its projection (`<projection>:<saga id>:<run version>`): a
    consumer that sees it twice got a resend."""
    projection: str
    saga_id: str
    body: dict[str, Any]


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
    projected: tuple[ProjectedRecord, ...] = ()
    """The records of this transition (and of the child runs it starts) for the projections
    configured: written pending with it, sent after commit (`workflows.projections`)."""

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

    def projecting(self, records: tuple[ProjectedRecord, ...]) -> Transition:
        """The same transition, also writing `records` pending (sent after its commit)."""
        return replace(self, projected=records) if records else self

    def traced(self, trace: str | None) -> Transition:
        """The same transition, beginning the trace segment `trace` (a `traceparent`) for its run."""
        if trace is None:
            return self
        return replace(self, after=replace(self.after, trace=trace))

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
