"""The store's interfaces, one small Protocol per kind of caller, and `SagaStore`, their union.

Every write to the saga tables goes through one of these methods. A caller names the narrowest
Protocol it uses (the decision loop a `Recorder`, the version report `WorkerVersions`...); a
`Runtime` holds the whole `SagaStore`. `open_store(url)` (in `workflows.store`) picks the
implementation by URL: `SQLiteStore` for `sqlite://`, `PostgresStore` for `postgresql://`. Both
pass the same contract suite, every Protocol of it (`tests/servers/test_store.py`,
`tests/servers/test_store_interfaces.py`). A `Transition` (from the pure engine) holds every row a decision
writes: the run, its changed steps, its history, its dead letters and the dead letters it resolves;
the store writes exactly that, atomically, or raises `ConcurrentTransition` and writes nothing.

The records these methods take and return are in `workflows.store.records` (re-exported here).
"""
from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from workflows.core.state import DeadLetter, HistoryEvent, RunState, Transition
from workflows.core.transition import ProjectedRecord
from workflows.core.views import DeadLetterView, EventView, SagaView, SignalView, WorkerView
from workflows.store.notifications import AttemptRecord, IdleRun, NewNotification, NotificationRecord
from workflows.store.records import (ActivityBucket, CallerTx, ChildLink, Created, DeadLetterGroup, DeadLetterPage,
                                     DeadLetterQuery, ParkedStep, RecordedDefinition, RunCounts, SagaQuery,
                                     SagaSummary, SagaSummaryPage, StepDuration, StepRetries, VersionCount,
                                     input_hash)


class Recorder(Protocol):
    """The decision loop's recorder (`workflows.runtime.loop.DecisionLoop`, the step task): read a
    run, write a transition, start a run, note what changed nothing, and the dead letters a
    transition leaves for the broker."""

    def load(self, saga_id: str) -> RunState:
        """The run and its steps as of one snapshot. `SagaNotFound` if there is none."""
        ...

    def commit(self, t: Transition, *, by: str, now: datetime) -> None:
        """Write `t` if the run is still at `t.before.version`, else raise `ConcurrentTransition`; a
        closure of a dead letter no longer OPEN raises `DeadLetterHandled`. All or nothing."""
        ...

    def create_run(self, t: Transition, *, idempotency_key: str | None, now: datetime) -> Created:
        """Insert the run `t.after` (already started: `t` is its `Started` transition), its steps and
        its history, atomically. With an idempotency key already used for the same saga type and
        input: nothing written, `created` False. Other content: `IdempotencyConflict`. A taken
        explicit id: `SagaIdTaken`."""
        ...

    def create_run_in(self, tx: CallerTx, t: Transition, *, idempotency_key: str | None,
                      now: datetime) -> Created:
        """`create_run` in a SAVEPOINT of `tx`: the run commits or rolls back with the caller's rows.
        A used key or taken id rolls back to the savepoint only: `tx` stays usable."""
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

    def signal_for_key(self, saga_id: str, idempotency_key: str) -> SignalView | None:
        """The signal recorded under `idempotency_key` for run `saga_id`, or None."""
        ...

    def add_dead_letter(self, dl: DeadLetter, *, saga_id: str | None, now: datetime) -> None:
        """A dead letter outside any transition (a message no run can take), with its history row."""
        ...

    def unsent_dead_letters(self, created_before: datetime, limit: int = 100) -> list[DeadLetterView]:
        """Dead letters committed before `created_before` whose broker copy was never sent."""
        ...

    def mark_dead_letters_sent(self, ids: Sequence[str], now: datetime) -> None:
        """Their copies reached the broker."""
        ...

    def unsent_projections(self, created_before: datetime, limit: int = 500) -> list[ProjectedRecord]:
        """Projection records (`workflows.projections`) written before `created_before`, not sent yet."""
        ...

    def projections_sent(self, ids: Sequence[str]) -> None:
        """Forget the projection records sent."""
        ...

    def history(self, saga_id: str) -> Sequence[EventView]:
        """The run's history rows, oldest first (a redelivered step looks for its own commit in it)."""
        ...

    def park_step(self, p: ParkedStep, event: HistoryEvent, *, by: str, now: datetime) -> None:
        """Record a parked step and its history row, atomically (a step of a version this worker does
        not hold, handed on until one that does takes it)."""
        ...


class CallerTransactions(Protocol):
    """Writing and reading in the caller's own transaction (`workflows.store.joined`): `tx` is the
    web app's SQLAlchemy Session or Connection, on the store's database."""

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


class Queries(Protocol):
    """Reads of one run for the API, the CLI, the client and the operators."""

    def get(self, saga_id: str) -> SagaView: ...

    def list(self, *, state: str | None = None, saga_type: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[SagaView], int]: ...

    def run_for_key(self, idempotency_key: str, saga_type: str, data: dict[str, Any]) -> str | None:
        """The run `idempotency_key` names, or None; `IdempotencyConflict` if its content differs."""
        ...

    def saga_id_for_key(self, idempotency_key: str) -> str | None:
        """The run started under `idempotency_key` (a business id), if any."""
        ...

    def saga_type(self, saga_id: str) -> str | None:
        """The saga type of run `saga_id`, or None if there is no such run."""
        ...

    def history(self, saga_id: str) -> Sequence[EventView]:
        """The run's history rows, oldest first."""
        ...

    def ping(self) -> None:
        """Raise if the database does not answer."""
        ...


class DeadLetterDesk(Protocol):
    """Dead letters as operators see and close them (`workflows.operations.dead_letters`)."""

    def dead_letters(self, *, status: str | None = "OPEN", saga_id: str | None = None,
                     limit: int = 100) -> builtins.list[DeadLetterView]: ...

    def dead_letter(self, dl_id: str) -> DeadLetterView: ...

    def discard_dead_letter(self, dl_id: str, *, resolution: str, event: HistoryEvent | None,
                            now: datetime) -> bool:
        """Mark an OPEN dead letter DISCARDED with its history row, atomically; False if not OPEN."""
        ...

    def open_dead_letters_of(self, saga_type: str, step: str, limit: int = 10_000) -> Sequence[DeadLetterView]: ...


class ConsoleQueries(Protocol):
    """The console's list, chart and dead-letter pages (`workflows.store.console`)."""

    def search_sagas(self, q: SagaQuery) -> SagaSummaryPage: ...

    def activity(self, until: datetime, *, minutes: int = 60,
                 bucket_minutes: int = 5) -> builtins.list[ActivityBucket]: ...

    def saga_type_names(self) -> builtins.list[str]: ...

    def search_dead_letters(self, q: DeadLetterQuery) -> DeadLetterPage: ...

    def open_dead_letter_groups(self) -> builtins.list[DeadLetterGroup]: ...


class Metrics(Protocol):
    """The Prometheus collector's aggregates (`workflows.interfaces.metrics`)."""

    def run_counts(self) -> builtins.list[RunCounts]: ...

    def step_retries(self) -> builtins.list[StepRetries]: ...

    def step_durations(self, since: datetime, limit: int) -> builtins.list[StepDuration]: ...

    def dead_letter_counts(self) -> dict[str, int]: ...

    def outbox_unsent(self) -> int: ...

    def waits_timed_out(self) -> dict[str, int]:
        """Waits that timed out with no signal, by saga type."""
        ...


class Sweeps(Protocol):
    """What the sweeper and the retention job look for (`workflows.operations.sweeper`, `.retention`):
    indexed ranges of what is due."""

    def due_deadlines(self, now: datetime, limit: int = 500) -> builtins.list[str]: ...

    def due_steps(self, now: datetime, limit: int = 500) -> builtins.list[tuple[str, str, str, int]]: ...

    def due_waits(self, now: datetime, limit: int = 500) -> builtins.list[tuple[str, str, str]]:
        """(saga id, saga type, wait) of parked waits whose deadline passed (an indexed range)."""
        ...

    def due_starts(self, now: datetime, limit: int = 500) -> builtins.list[tuple[str, str]]:
        """(saga id, saga type) of SCHEDULED runs whose start time came."""
        ...

    def child_links(self, updated_before: datetime, limit: int = 500) -> builtins.list[ChildLink]:
        """Child steps still RUNNING or COMPENSATING, with their child run, the child or the parent
        unchanged since `updated_before`."""
        ...

    def prune(self, ended_before: datetime, *, limit: int = 1000) -> int:
        """Delete up to `limit` runs that ended (COMPLETED, COMPENSATED) before `ended_before`, with
        their rows; never one with an open dead letter or an unsent outbox row. Returns how many."""
        ...


class WorkerVersions(Protocol):
    """Versioned definitions (`workflows.store.workers`): worker heartbeats, recorded shapes, runs
    per version, and the step messages parked for a version no worker holds."""

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

    def recorded_definitions(self) -> builtins.list[RecordedDefinition]:
        """Every (saga, version) a worker has recorded, with its fingerprint and shape."""
        ...

    def version_counts(self, *, active_only: bool = False) -> builtins.list[VersionCount]:
        """Orchestrated runs by saga type, version and state (`active_only`: the states not terminal)."""
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


class EventLog(Protocol):
    """The choreography's event log (`workflows.store.events`; records `SagaHead`, `OutboxRecord`):
    its units of writes, its processed-event markers, its outbox and its own sweeps."""

    def event_unit(self) -> AbstractContextManager[Any]:
        """One transaction of choreography writes: an `EventUnit` (saga lock, history, outbox, state, dead letters)."""
        ...

    def event_processed(self, consumer: str, event_id: str) -> bool:
        """Has `consumer` committed its handling of event `event_id`?"""
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


class Notices(Protocol):
    """The notifications' part (`workflows.notifications`, `workflows.store.notifications`): events
    that need a person, recorded once by their dedup key, and their delivery attempts."""

    def record_notifications(self, notices: Sequence[NewNotification], *, state: str,
                             now: datetime) -> list[str]: ...

    def recorded_notifications(self, ids: Sequence[str]) -> set[str]: ...

    def due_notifications(self, now: datetime, limit: int = 100) -> list[str]: ...

    def claim_notification(self, notification_id: str, now: datetime,
                           lease_until: datetime) -> NotificationRecord | None: ...

    def notification_attempted(self, notification_id: str, *, target: str, at: datetime, ok: bool,
                               status_code: int | None = None, error: str | None = None,
                               next_attempt_at: datetime | None = None) -> None: ...

    def notifications(self, *, saga_id: str | None = None, state: str | None = None,
                      limit: int = 100) -> list[NotificationRecord]: ...

    def notification_attempts(self, ids: Sequence[str]) -> dict[str, list[AttemptRecord]]: ...

    def notification_counts(self) -> dict[str, int]: ...

    def runs_without_progress(self, updated_before: datetime, limit: int = 500) -> list[IdleRun]: ...


class SagaStore(Recorder, CallerTransactions, Queries, DeadLetterDesk, ConsoleQueries, Metrics, Sweeps,
                WorkerVersions, EventLog, Notices, Protocol):
    """The saga tables behind one interface: the union of the Protocols above (what a `Runtime`
    holds). The only code that touches sessions and models."""

    url: str


__all__ = ["ActivityBucket", "CallerTransactions", "CallerTx", "ChildLink", "ConsoleQueries", "Created",
           "DeadLetterDesk", "Notices", "DeadLetterGroup", "DeadLetterPage", "DeadLetterQuery", "EventLog", "Metrics",
           "ParkedStep", "Queries", "RecordedDefinition", "Recorder", "RunCounts", "SagaQuery", "SagaStore",
           "SagaSummary", "SagaSummaryPage", "StepDuration", "StepRetries", "Sweeps", "VersionCount",
           "WorkerVersions", "input_hash"]
