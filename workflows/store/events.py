"""The choreography's part of the store: its transactions, its outbox, its reads.

    with store.event_unit() as u:                      # one transaction
        u.lock_saga(saga_id)                             # the saga row, locked until commit
        ...                                              # a handler writes its own tables in u.session
        u.mark_processed("payment", event_id, saga_id=saga_id, now=now)   # EventAlreadyProcessed if done
        u.add_history(saga_id, "EventHandled", now, step="OrderCreated", detail={...})
        u.write_outbox(event_id=..., targets=["orders"], ...)
        u.set_state(saga_id, state="RUNNING", failure_reason=None, deadline_at=..., now=now)
    rows = store.unsent_outbox(ids=u.outbox_ids)         # after commit: read, send, then
    store.mark_outbox_sent([r.id for r in rows], now)    # mark sent (a second statement)

`EventUnit` owns the session of one transaction: the saga's rows are written only through its
methods; `session` is exposed for the handler's own tables, which commit with them. What it and
`EventStore` return are plain records (`SagaHead`, `OutboxRecord`, and `core.views`' `EventView`
and `DeadLetterView`), never ORM rows. Deriving a choreography's state from what they return is
the choreography's business (`workflows.choreography.history.derive`): this module knows
nothing of choreographies beyond their rows.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from workflows.core.state import DeadLetter, RunStatus
from workflows.core.views import DeadLetterView, EventView
from workflows.store.models import DeadLetterRow, EventRow, OutboxRow, ProcessedEventRow, SagaRow
from workflows.store.reads import _dead_letter_view, dead_letter_rows, history
from workflows.store.records import DeadLetterQuery, input_hash
from workflows.store.rows import dead_letter_values

_SAGAS = SagaRow.__table__
_OUTBOX = OutboxRow.__table__
_DEAD_LETTERS = DeadLetterRow.__table__
_PROCESSED = ProcessedEventRow.__table__


@dataclass(frozen=True)
class SagaHead:
    """What a choreography reads of a saga row (locked, inside a unit)."""

    id: str
    saga_type: str
    style: str
    state: str
    deadline_at: datetime | None


@dataclass(frozen=True)
class OutboxRecord:
    """One outbox row: an event to deliver to its targets (consumers)."""

    id: int
    event_id: str
    saga_id: str
    saga_type: str
    event_type: str
    causation_id: str | None
    source: str
    envelope: dict[str, Any]
    """The full envelope, as sent (wire form)."""
    targets: list[str]
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    last_error: str | None


class EventAlreadyProcessed(Exception):
    """(consumer, event id) is in `processed_events` already: another delivery of that event
    committed first. Nothing of this unit is written."""


class SagaRowTaken(Exception):
    """A saga row could not be inserted: its id or its idempotency key is taken. Nothing of this
    unit is written."""


def _outbox_record(r: OutboxRow) -> OutboxRecord:
    return OutboxRecord(id=r.id, event_id=r.event_id, saga_id=r.saga_id, saga_type=r.saga_type,
                        event_type=r.event_type, causation_id=r.causation_id, source=r.source,
                        envelope=dict(r.envelope), targets=list(r.targets or []), created_at=r.created_at,
                        sent_at=r.sent_at, attempts=r.attempts, last_error=r.last_error)


def _event_dead_letters(s: Session, saga_id: str) -> list[DeadLetterView]:
    q = DeadLetterQuery(status=None, kind="event", saga_id=saga_id, oldest_first=True)
    return [_dead_letter_view(r) for r in dead_letter_rows(s, q, None)]


def _outbox_of(s: Session, saga_id: str, limit: int | None) -> list[OutboxRecord]:
    q = select(OutboxRow).where(OutboxRow.saga_id == saga_id).order_by(OutboxRow.id)
    if limit is not None:
        q = q.limit(limit)
    return [_outbox_record(r) for r in s.scalars(q)]


class EventUnit:
    """One transaction of choreography writes (see `EventStore.event_unit`).

    Reads inside it see its own writes (pending ones are flushed first). Leaving the block
    commits; an exception rolls everything back, the handler's own writes included."""

    def __init__(self, session: Session) -> None:
        self._s = session
        self._outbox: list[OutboxRow] = []

    @property
    def session(self) -> Session:
        """The transaction itself, for a handler's writes to its own service's tables only."""
        return self._s

    @property
    def outbox_ids(self) -> list[int]:
        """Ids of the outbox rows this unit wrote that have targets to send to (complete once the
        unit committed)."""
        return [r.id for r in self._outbox if r.sent_at is None]

    # ------------------------------------------------------------ the saga row

    def lock_saga(self, saga_id: str) -> SagaHead | None:
        """The saga row, locked until the unit ends (PostgreSQL row lock; SQLite's writer lock)."""
        r = self._s.execute(select(SagaRow.id, SagaRow.saga_type, SagaRow.style, SagaRow.state, SagaRow.deadline_at)
                            .where(SagaRow.id == saga_id).with_for_update()).first()
        return None if r is None else SagaHead(r.id, r.saga_type, r.style, r.state, r.deadline_at)

    def create_saga(self, *, saga_id: str, saga_type: str, input: dict[str, Any], idempotency_key: str | None,
                    now: datetime) -> None:
        """Insert a choreographed saga (RUNNING, no steps); a taken id or idempotency key raises
        `SagaRowTaken` at once."""
        self._s.flush()
        try:
            self._s.execute(insert(_SAGAS).values(
                id=saga_id, saga_type=saga_type, style="choreographed", state=RunStatus.RUNNING.value, version=1,
                input=input, input_hash=input_hash(saga_type, input), idempotency_key=idempotency_key,
                caused_by=None, failure_reason=None, created_at=now, updated_at=now, deadline_at=None))
        except IntegrityError as e:
            raise SagaRowTaken(f"saga id {saga_id!r} or idempotency key {idempotency_key!r} is taken") from e

    def set_state(self, saga_id: str, *, state: str, failure_reason: str | None, deadline_at: datetime | None,
                  now: datetime) -> None:
        """Store the saga's derived state (a new version of the row, made by no message)."""
        self._s.execute(update(_SAGAS).where(_SAGAS.c.id == saga_id).values(
            state=state, failure_reason=failure_reason, deadline_at=deadline_at, updated_at=now, caused_by=None,
            version=_SAGAS.c.version + 1))

    def push_deadline(self, saga_id: str, due: datetime) -> None:
        """Move the saga's deadline to `due` if it is earlier (a terminal saga has none: unchanged)."""
        self._s.execute(update(_SAGAS).where(_SAGAS.c.id == saga_id, _SAGAS.c.deadline_at < due)
                        .values(deadline_at=due))

    # ------------------------------------------------------------ history, outbox, processed events

    def add_history(self, saga_id: str, type_: str, now: datetime, *, step: str | None = None,
                    attempt: int | None = None, detail: dict[str, Any] | None = None) -> None:
        """Append one history row."""
        self._s.add(EventRow(saga_id=saga_id, at=now, type=type_, step=step, attempt=attempt,
                             detail=dict(detail or {})))

    def history(self, saga_id: str, types: Sequence[str] | None = None) -> list[EventView]:
        """The saga's history rows (of `types`, if given), oldest first, this unit's included."""
        self._s.flush()
        return history(self._s, saga_id, types)

    def write_outbox(self, *, event_id: str, saga_id: str, saga_type: str, event_type: str,
                     causation_id: str | None, source: str, envelope: dict[str, Any], targets: Sequence[str],
                     now: datetime) -> None:
        """Add an event to the outbox, to send to `targets` after commit (none: born sent)."""
        row = OutboxRow(event_id=event_id, saga_id=saga_id, saga_type=saga_type, event_type=event_type,
                        causation_id=causation_id, source=source, envelope=envelope, targets=list(targets),
                        created_at=now, sent_at=None if targets else now, attempts=0)
        self._s.add(row)
        self._outbox.append(row)

    def outbox(self, saga_id: str) -> list[OutboxRecord]:
        """The saga's outbox rows, oldest first, this unit's included."""
        self._s.flush()
        return _outbox_of(self._s, saga_id, None)

    def mark_processed(self, consumer: str, event_id: str, *, saga_id: str | None, now: datetime) -> None:
        """Record that `consumer` handled `event_id`; `EventAlreadyProcessed` if it was already.

        The unit's pending writes (a handler's) are flushed first, so their own errors surface
        as they are, not as a duplicate."""
        self._s.flush()
        try:
            self._s.execute(insert(_PROCESSED).values(consumer=consumer, event_id=event_id, saga_id=saga_id,
                                                      processed_at=now))
        except IntegrityError:
            raise EventAlreadyProcessed(f"{consumer} has handled event {event_id} already") from None

    # ------------------------------------------------------------ dead letters

    def add_dead_letter(self, dl: DeadLetter, *, saga_id: str | None, now: datetime) -> None:
        """A dead letter (OPEN, its broker copy unsent) with its `DeadLettered` history row."""
        self._s.add(DeadLetterRow(**dead_letter_values(dl, saga_id, now)))
        if saga_id:
            self.add_history(saga_id, "DeadLettered", now, step=dl.step, attempt=dl.attempts,
                             detail={"kind": dl.kind, "error": str(dl.error), "dead_letter": dl.id})

    def resolve_dead_letter(self, dl_id: str, *, status: str, resolution: str, now: datetime) -> bool:
        """Mark an OPEN dead letter `status` (REDRIVEN, DISCARDED); False if it is not OPEN."""
        self._s.flush()
        q = update(_DEAD_LETTERS).where(_DEAD_LETTERS.c.id == dl_id, _DEAD_LETTERS.c.status == "OPEN")
        done = self._s.execute(q.values(status=status, resolution=resolution, resolved_at=now))
        return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    def event_dead_letters(self, saga_id: str) -> list[DeadLetterView]:
        """The saga's dead letters of kind 'event', oldest first, this unit's included."""
        self._s.flush()
        return _event_dead_letters(self._s, saga_id)


class EventStore:
    """Mixed into `SqlStore`: what choreography reads and writes of the saga tables (a run's type
    and history are the read model's, `store.reads`)."""

    url: str
    sessions: sessionmaker[Session]

    @contextmanager
    def event_unit(self) -> Iterator[EventUnit]:
        with self.sessions.begin() as s:
            yield EventUnit(s)

    def event_processed(self, consumer: str, event_id: str) -> bool:
        with self.sessions() as s:
            return s.get(ProcessedEventRow, (consumer, event_id)) is not None

    def event_dead_letters(self, saga_id: str) -> list[DeadLetterView]:
        with self.sessions() as s:
            return _event_dead_letters(s, saga_id)

    def outbox_of(self, saga_id: str, limit: int | None = None) -> list[OutboxRecord]:
        with self.sessions() as s:
            return _outbox_of(s, saga_id, limit)

    def unsent_outbox(self, *, ids: Sequence[int] | None = None, causation_id: str | None = None,
                      source: str | None = None, created_up_to: datetime | None = None,
                      limit: int = 500) -> list[OutboxRecord]:
        q = select(OutboxRow).where(OutboxRow.sent_at.is_(None))
        if ids is not None:
            q = q.where(OutboxRow.id.in_(list(ids)))
        if causation_id is not None:
            q = q.where(OutboxRow.causation_id == causation_id)
        if source is not None:
            q = q.where(OutboxRow.source == source)
        if created_up_to is not None:
            q = q.where(OutboxRow.created_at <= created_up_to)
        with self.sessions() as s:
            return [_outbox_record(r) for r in s.scalars(q.order_by(OutboxRow.id).limit(limit))]

    def mark_outbox_sent(self, ids: Sequence[int], now: datetime) -> int:
        if not ids:
            return 0
        with self.sessions.begin() as s:
            done = s.execute(update(_OUTBOX).where(_OUTBOX.c.id.in_(list(ids)), _OUTBOX.c.sent_at.is_(None))
                             .values(sent_at=now))
            return int(done.rowcount)  # type: ignore[attr-defined]

    def outbox_send_failed(self, row_id: int, error: str) -> None:
        with self.sessions.begin() as s:
            s.execute(update(_OUTBOX).where(_OUTBOX.c.id == row_id)
                      .values(attempts=_OUTBOX.c.attempts + 1, last_error=error[:2000]))

    def stuck_choreographies(self, now: datetime, limit: int = 500) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(SagaRow.id).where(
                SagaRow.style == "choreographed",
                SagaRow.state.in_([RunStatus.RUNNING.value, RunStatus.COMPENSATING.value]),
                SagaRow.deadline_at < now).order_by(SagaRow.deadline_at).limit(limit)))

    def failed_choreographies_with_discards(self, limit: int = 200) -> list[tuple[str, str]]:
        with self.sessions() as s:
            rows = s.execute(select(SagaRow.id, SagaRow.saga_type).distinct().join(
                DeadLetterRow, DeadLetterRow.saga_id == SagaRow.id).where(
                SagaRow.style == "choreographed", SagaRow.state == RunStatus.FAILED.value,
                DeadLetterRow.kind == "event", DeadLetterRow.status == "DISCARDED",
                DeadLetterRow.resolved_at >= SagaRow.updated_at).limit(limit)).all()
        return [(saga_id, saga_type) for saga_id, saga_type in rows]
