"""The store interface: every write to the saga tables goes through one of these methods.

`open_store(url)` (in `workflows.store`) picks the implementation by URL: `SQLiteStore` for
`sqlite://`, `PostgresStore` for `postgresql://`. Both pass the same contract suite
(`tests/test_store.py`). A `Transition` (from the pure engine) holds every row a decision writes:
the run, its changed steps, its history, its dead letters and the dead letters it resolves; the
store writes exactly that, atomically, or raises `ConcurrentTransition` and writes nothing.
"""
from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from workflows.core.state import DeadLetter, HistoryEvent, RunState, Transition
from workflows.core.views import DeadLetterView, EventView, SagaView, SignalView, WorkerView

CallerTx = Session | Connection
"""The caller's transaction (`workflows.store.joined`): an ORM `Session` or a Core `Connection`."""


@dataclass(frozen=True)
class Created:
    """What `SagaStore.create_run` did."""

    saga_id: str
    created: bool
    """False: the idempotency key named a run that exists (returned as is; nothing to publish)."""


@dataclass(frozen=True)
class RunCounts:
    """Runs of one saga type in one state (metrics)."""

    saga_type: str
    state: str
    count: int


@dataclass(frozen=True)
class StepRetries:
    """Attempts beyond the first of one step of one saga type, actions and compensations (metrics)."""

    saga_type: str
    step: str
    actions: int
    compensations: int
    redeliveries: int = 0
    """Deliveries after a lost worker, of the actions (`saga_steps.redeliveries`)."""
    compensation_redeliveries: int = 0


@dataclass(frozen=True)
class ChildLink:
    """A parent's child step still waiting, and its child run (the sweeper's recovery of children)."""

    parent_id: str
    parent_type: str
    parent_state: str
    step: str
    step_status: str
    child_id: str
    child_type: str
    child_state: str


@dataclass(frozen=True)
class StepDuration:
    saga_type: str
    step: str
    seconds: float


@dataclass(frozen=True)
class SagaQuery:
    """The console's saga list: every filter given must hold."""

    state: str | None = None
    saga_type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    stuck_at: datetime | None = None
    """Only runs not terminal with a deadline passed at this moment (a step's or the saga's)."""
    open_dead_letters: bool = False
    """Only runs with at least one OPEN dead letter."""
    search: str | None = None
    """A saga id, an idempotency key, or the value of one of `search_keys` in the run's input."""
    search_keys: tuple[str, ...] = ("order_id",)
    """Top-level input fields the search looks in (business keys)."""
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class SagaSummary:
    """One row of the console's saga list (no steps, no history)."""

    id: str
    saga_type: str
    style: str
    state: str
    idempotency_key: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    open_dead_letters: int


@dataclass(frozen=True)
class SagaSummaryPage:
    items: list[SagaSummary]
    total: int
    by_state: dict[str, int]
    """Runs per state under the query's filters but its state."""


@dataclass
class ActivityBucket:
    """Runs started and ended in one slot of the console's activity chart."""

    start: datetime
    started: int = 0
    completed: int = 0
    compensated: int = 0
    failed: int = 0


@dataclass(frozen=True)
class DeadLetterQuery:
    status: str | None = "OPEN"
    saga_type: str | None = None
    step: str | None = None
    kind: str | None = None
    saga_id: str | None = None
    limit: int = 50
    offset: int = 0
    oldest_first: bool = False


@dataclass(frozen=True)
class DeadLetterPage:
    items: list[DeadLetterView]
    saga_types: dict[str, str] = field(default_factory=dict)
    """The saga type of each dead letter's run, by dead-letter id (none for a message no run took)."""
    total: int = 0


@dataclass(frozen=True)
class DeadLetterGroup:
    """OPEN dead letters of one step of one saga type: what a bulk redrive takes at once."""

    saga_type: str
    step: str
    kind: str
    count: int


@dataclass(frozen=True)
class RecordedDefinition:
    saga_type: str
    saga_version: int
    fingerprint: str
    shape: list[Any]


@dataclass(frozen=True)
class VersionCount:
    """Runs of one version of one saga type in one state."""

    saga_type: str
    saga_version: int
    state: str
    count: int


@dataclass(frozen=True)
class ParkedStep:
    """A step message a worker dropped after handing it on `MAX_HANDOFFS` times."""

    saga_id: str
    task_id: str
    saga_type: str
    saga_version: int
    step: str
    kind: str


def input_hash(saga_type: str, data: dict[str, Any]) -> str:
    """What an idempotency key is bound to: the saga type and its input."""
    blob = json.dumps([saga_type, data], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class SagaStore(Protocol):
    """The saga tables behind one interface. The only code that touches sessions and models."""

    url: str

    # -- runs
    def create_run(self, t: Transition, *, idempotency_key: str | None, now: datetime) -> Created:
        """Insert the run `t.after` (already started: `t` is its `Started` transition), its steps and
        its history, atomically. With an idempotency key already used for the same saga type and
        input: nothing written, `created` False. Other content: `IdempotencyConflict`. A taken
        explicit id: `SagaIdTaken`."""
        ...

    def run_for_key(self, idempotency_key: str, saga_type: str, data: dict[str, Any]) -> str | None:
        """The run `idempotency_key` names, or None; `IdempotencyConflict` if its content differs."""
        ...

    # -- in the caller's transaction (workflows.store.joined): `tx` is the web app's own SQLAlchemy
    # Session or Connection, on the store's database
    def create_run_in(self, tx: CallerTx, t: Transition, *, idempotency_key: str | None,
                      now: datetime) -> Created:
        """`create_run` in a SAVEPOINT of `tx`: the run commits or rolls back with the caller's rows.
        A used key or taken id rolls back to the savepoint only: `tx` stays usable."""
        ...

    def run_for_key_in(self, tx: CallerTx, idempotency_key: str, saga_type: str,
                       data: dict[str, Any]) -> str | None:
        """`run_for_key` as `tx` sees it (its own uncommitted runs included)."""
        ...

    def saga_type_in(self, tx: CallerTx, saga_id: str) -> str | None:
        """`saga_type` as `tx` sees it."""
        ...

    def event_unit_in(self, tx: CallerTx) -> AbstractContextManager[Any]:
        """`event_unit` in a SAVEPOINT of `tx` (committed with the caller's transaction)."""
        ...

    def after_commit(self, tx: CallerTx, action: Callable[[], object], *,
                     check: Callable[[], bool] | None = None) -> None:
        """Run `action` once the outermost transaction of `tx` has committed; never if it rolls
        back. Registered inside a savepoint of `tx`, `check` runs first (did the writes survive?)."""
        ...

    def prune(self, ended_before: datetime, *, limit: int = 1000) -> int:
        """Delete up to `limit` runs that ended (COMPLETED, COMPENSATED) before `ended_before`, with
        their rows; never one with an open dead letter or an unsent outbox row. Returns how many."""
        ...

    def load(self, saga_id: str) -> RunState:
        """The run and its steps as of one snapshot. `SagaNotFound` if there is none."""
        ...

    def commit(self, t: Transition, *, by: str, now: datetime) -> None:
        """Write `t` if the run is still at `t.before.version`, else raise `ConcurrentTransition`; a
        closure of a dead letter no longer OPEN raises `DeadLetterHandled`. All or nothing."""
        ...

    def record(self, saga_id: str, event: HistoryEvent, *, by: str | None, now: datetime) -> None:
        """Append one history row outside any transition (stale or ignored reports, notes)."""
        ...

    def count_redelivery(self, saga_id: str, step: str, kind: str, task_id: str, attempt: int, *,
                         by: str, now: datetime, first: bool = False) -> int | None:
        """A step message came back (its worker died, or the broker restored it): add one to the
        step's redeliveries of `kind` and append its `StepRedelivered` history row, atomically, if the
        step still waits on that very message (`task_id`, attempt `attempt`, in flight). Returns the
        new count, or None when the step moved on (nothing written). `first`: only if none was
        counted yet (None otherwise), for a loss that each copy of one redelivered message would
        count again (an inline follow-up's). Not version-checked: a counter, not a transition; no
        transition writes it."""
        ...

    # -- dead letters
    def add_dead_letter(self, dl: DeadLetter, *, saga_id: str | None, now: datetime) -> None:
        """A dead letter outside any transition (a message no run can take), with its history row."""
        ...

    def discard_dead_letter(self, dl_id: str, *, resolution: str, event: HistoryEvent | None,
                            now: datetime) -> bool:
        """Mark an OPEN dead letter DISCARDED with its history row, atomically; False if not OPEN."""
        ...

    def mark_dead_letters_sent(self, ids: Sequence[str], now: datetime) -> None:
        """Their copies reached the broker."""
        ...

    def unsent_dead_letters(self, created_before: datetime, limit: int = 100) -> list[DeadLetterView]:
        """Dead letters committed before `created_before` whose broker copy was never sent."""
        ...

    # -- reads
    def get(self, saga_id: str) -> SagaView: ...

    def list(self, *, state: str | None = None, saga_type: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[SagaView], int]: ...

    def due_deadlines(self, now: datetime, limit: int = 500) -> builtins.list[str]: ...

    def due_steps(self, now: datetime, limit: int = 500) -> builtins.list[tuple[str, str, str, int]]: ...

    def due_waits(self, now: datetime, limit: int = 500) -> builtins.list[tuple[str, str, str]]:
        """(saga id, saga type, wait) of parked waits whose deadline passed (an indexed range)."""
        ...

    def due_starts(self, now: datetime, limit: int = 500) -> builtins.list[tuple[str, str]]:
        """(saga id, saga type) of SCHEDULED runs whose start time came."""
        ...

    def signal_for_key(self, saga_id: str, idempotency_key: str) -> SignalView | None:
        """The signal recorded under `idempotency_key` for run `saga_id`, or None."""
        ...

    def child_links(self, updated_before: datetime, limit: int = 500) -> builtins.list[ChildLink]:
        """Child steps still RUNNING or COMPENSATING, with their child run, the child or the parent
        unchanged since `updated_before`."""
        ...

    def dead_letters(self, *, status: str | None = "OPEN", saga_id: str | None = None,
                     limit: int = 100) -> builtins.list[DeadLetterView]: ...

    def dead_letter(self, dl_id: str) -> DeadLetterView: ...

    def ping(self) -> None:
        """Raise if the database does not answer."""
        ...

    # -- metrics
    def run_counts(self) -> builtins.list[RunCounts]: ...

    def step_retries(self) -> builtins.list[StepRetries]: ...

    def step_durations(self, since: datetime, limit: int) -> builtins.list[StepDuration]: ...

    def dead_letter_counts(self) -> dict[str, int]: ...

    def outbox_unsent(self) -> int: ...

    # -- the console (workflows.store.console)
    def search_sagas(self, q: SagaQuery) -> SagaSummaryPage: ...

    def activity(self, until: datetime, *, minutes: int = 60,
                 bucket_minutes: int = 5) -> builtins.list[ActivityBucket]: ...

    def saga_type_names(self) -> builtins.list[str]: ...

    def search_dead_letters(self, q: DeadLetterQuery) -> DeadLetterPage: ...

    def open_dead_letter_groups(self) -> builtins.list[DeadLetterGroup]: ...

    def open_dead_letters_of(self, saga_type: str, step: str, limit: int = 10_000) -> Sequence[DeadLetterView]: ...

    def waits_timed_out(self) -> dict[str, int]:
        """Waits that timed out with no signal, by saga type."""
        ...

    # -- versions (workflows.store.workers)
    def announce_worker(self, name: str, versions: dict[str, dict[str, str]], now: datetime) -> None:
        """Insert or refresh worker `name`'s heartbeat: {saga: {version: fingerprint}} it holds."""
        ...

    def forget_worker(self, name: str) -> None:
        """Worker `name` stopped."""
        ...

    def live_workers(self, seen_since: datetime) -> builtins.list[WorkerView]:
        """Workers whose heartbeat is newer than `seen_since`."""
        ...

    def record_definitions(self, defs: builtins.list[RecordedDefinition],
                           now: datetime) -> builtins.list[tuple[RecordedDefinition, RecordedDefinition]]:
        """Record each (saga, version, fingerprint, shape) not recorded yet; returns (recorded, given)
        for those recorded with another fingerprint."""
        ...

    def park_step(self, p: ParkedStep, event: HistoryEvent, *, by: str, now: datetime) -> None:
        """Record a parked step and its history row, atomically (a second park of it changes nothing)."""
        ...

    def parked_steps(self, limit: int = 500) -> builtins.list[ParkedStep]:
        """Parked steps, oldest first."""
        ...

    def unpark(self, saga_id: str, task_id: str) -> None:
        """The parked step was dispatched again, or its run moved on."""
        ...

    def recorded_definitions(self) -> builtins.list[RecordedDefinition]:
        """Every (saga, version) a worker has recorded, with its fingerprint and shape."""
        ...

    def version_counts(self, *, active_only: bool = False) -> builtins.list[VersionCount]:
        """Orchestrated runs by saga type, version and state (`active_only`: the states not terminal)."""
        ...

    # -- choreography (workflows.store.events; records: SagaHead, OutboxRecord). `Sequence`: in this
    # class body `list` is the method above
    def event_unit(self) -> AbstractContextManager[Any]:
        """One transaction of choreography writes: an `EventUnit` (saga lock, history, outbox, state, dead letters)."""
        ...

    def saga_type(self, saga_id: str) -> str | None:
        """The saga type of run `saga_id`, or None if there is no such run."""
        ...

    def event_processed(self, consumer: str, event_id: str) -> bool:
        """Has `consumer` committed its handling of event `event_id`?"""
        ...

    def history(self, saga_id: str) -> Sequence[EventView]:
        """The run's history rows, oldest first."""
        ...

    def event_dead_letters(self, saga_id: str) -> Sequence[DeadLetterView]:
        """The run's dead letters of kind 'event' (any status), oldest first."""
        ...

    def outbox_of(self, saga_id: str, limit: int | None = None) -> Sequence[Any]:
        """The run's outbox rows (`OutboxRecord`), oldest first."""
        ...

    def unsent_outbox(self, *, ids: Sequence[int] | None = None, causation_id: str | None = None,
                      source: str | None = None, created_up_to: datetime | None = None,
                      limit: int = 500) -> Sequence[Any]:
        """Unsent outbox rows (`OutboxRecord`) matching every filter given, oldest first; reads only, locks nothing."""
        ...

    def mark_outbox_sent(self, ids: Sequence[int], now: datetime) -> int:
        """Those outbox rows reached the broker (rows already marked are left as they are); returns how many changed."""
        ...

    def outbox_send_failed(self, row_id: int, error: str) -> None:
        """A relay could not send that outbox row: count the attempt, keep the error."""
        ...

    def stuck_choreographies(self, now: datetime, limit: int = 500) -> Sequence[str]:
        """Choreographed runs, not terminal, whose deadline passed at `now` (the oldest first)."""
        ...

    def failed_choreographies_with_discards(self, limit: int = 200) -> Sequence[tuple[str, str]]:
        """(saga id, saga type) of FAILED choreographed runs with an event dead letter discarded since they changed."""
        ...
