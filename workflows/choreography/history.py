"""A choreographed saga's history and the state derived from it.

Every event published and every delivery handled is a row of `saga_events`, written in the
transaction that did it; after each write the saga's state is derived again from those rows
(`derive`, a pure function) and stored in `sagas.state`, under the saga row's lock. So
`SELECT * FROM sagas WHERE state = 'COMPENSATING'` and `get_saga()` answer for a choreography as
they do for an orchestrated saga, though no coordinator ever decided anything.

History rows (type, step = the event type):
    SagaCreated          the first event was published (detail: saga_type, style, idempotency_key)
    EventPublished       detail: event_id, causation_id, source, consumers, payload
    EventHandled         detail: event_id, consumer, attempt, published, result
    EventAttemptFailed   detail: event_id, consumer, error, retry_in (attempt = the failed try)
    DeadLettered         a handler ran out of retries, or the event was malformed
    DuplicateEventIgnored / EventRedriven / DeliveryResent (by the sweeper, for a stuck saga)
    CompensationStarted, SagaCompleted, SagaCompensated, SagaFailed, SagaResumed: state changes
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workflows.core.engine import RunStatus
from workflows.store.models import DeadLetterRow, EventRow, SagaRow
from workflows.choreography.declaration import Choreography

STATE_EVENTS = {
    RunStatus.COMPLETED: "SagaCompleted",
    RunStatus.COMPENSATING: "CompensationStarted",
    RunStatus.COMPENSATED: "SagaCompensated",
    RunStatus.FAILED: "SagaFailed",
    RunStatus.RUNNING: "SagaResumed",
}


@dataclass(frozen=True)
class Row:
    """What derivation reads of one history row."""

    type: str
    step: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class Letter:
    """What derivation reads of one dead letter of the saga."""

    status: str
    event_id: str | None
    consumer: str | None
    exception: str


@dataclass(frozen=True)
class Derived:
    status: RunStatus
    reason: str | None
    pending: tuple[tuple[str, str], ...]
    """(event id, consumer) deliveries not handled yet."""


def derive(ch: Choreography, rows: Sequence[Row], letters: Iterable[Letter] = ()) -> Derived:
    """The saga's state from its history. Pure.

    FAILED while a dead letter is open or a `failed` event was published (an operator must act);
    otherwise COMPENSATING from the first `compensating`/`compensated` event until nothing is
    pending (and a `compensated` event, if declared, was published), then COMPENSATED; otherwise
    COMPLETED once a `completed` event was published and nothing is pending; else RUNNING.
    """
    letters = list(letters)
    expected: list[tuple[str, str]] = []
    seen: list[Row] = []
    handled: set[tuple[str, str]] = set()
    for r in rows:
        if r.type == "EventPublished":
            seen.append(r)
            expected.extend((r.detail["event_id"], c) for c in r.detail.get("consumers", []))
        elif r.type == "EventHandled":
            handled.add((r.detail["event_id"], r.detail["consumer"]))
    settled = handled | {(dl.event_id, dl.consumer) for dl in letters
                         if dl.status == "DISCARDED" and dl.event_id and dl.consumer}
    pending = tuple(d for d in dict.fromkeys(expected) if d not in settled)
    types = {r.step for r in seen}

    open_letters = [dl for dl in letters if dl.status == "OPEN"]
    if open_letters:
        return Derived(RunStatus.FAILED, f"dead-lettered: {open_letters[0].exception}", pending)
    failed = [r for r in seen if r.step in ch.failed]  # type: ignore[operator]
    if failed:
        return Derived(RunStatus.FAILED, _reason(failed[0]), pending)
    undo = [r for r in seen if r.step in ch.compensating or r.step in ch.compensated]  # type: ignore[operator]
    if undo:
        done = not pending and (not ch.compensated or bool(types & ch.compensated))  # type: ignore[operator]
        return Derived(RunStatus.COMPENSATED if done else RunStatus.COMPENSATING, _reason(undo[0]), pending)
    if types & ch.completed and not pending:  # type: ignore[operator]
        return Derived(RunStatus.COMPLETED, None, pending)
    return Derived(RunStatus.RUNNING, None, pending)


def _reason(r: Row) -> str:
    why = (r.detail.get("payload") or {}).get("reason")
    return f"{r.step}: {why}" if why else str(r.step)


# ------------------------------------------------------------------ writes (inside the caller's transaction)


def add(s: Session, saga_id: str, type_: str, now: datetime, *, step: str | None = None,
        attempt: int | None = None, **detail: Any) -> None:
    s.add(EventRow(saga_id=saga_id, at=now, type=type_, step=step, attempt=attempt, detail=detail))


def lock_saga(s: Session, saga_id: str) -> SagaRow | None:
    """The saga row, locked until the transaction ends (PostgreSQL row lock; SQLite's writer lock)."""
    return s.scalars(select(SagaRow).where(SagaRow.id == saga_id).with_for_update()).first()


def refresh(s: Session, ch: Choreography, saga_id: str, now: datetime) -> Derived | None:
    """Derive the saga's state again and store it, noting a change in the history.

    Call after this transaction's history rows are added: they are flushed and read back with the
    rows other transactions committed before the lock was granted.
    """
    row = lock_saga(s, saga_id)
    if row is None:
        return None
    derived = derive(ch, rows(s, saga_id), letters(s, saga_id))
    before = row.state
    if derived.status.value != before:
        add(s, saga_id, STATE_EVENTS[derived.status], now, reason=derived.reason, previous=before)
        row.state = derived.status.value
    row.failure_reason = derived.reason
    row.updated_at = now
    row.caused_by = None
    row.deadline_at = None if derived.status.terminal else now + timedelta(seconds=ch.deadline)
    return derived


def rows(s: Session, saga_id: str) -> list[Row]:
    """The history rows derivation reads (this transaction's included)."""
    s.flush()
    return [Row(t, st, d or {}) for t, st, d in s.execute(
        select(EventRow.type, EventRow.step, EventRow.detail)
        .where(EventRow.saga_id == saga_id, EventRow.type.in_(["EventPublished", "EventHandled"]))
        .order_by(EventRow.id)).all()]


def letters(s: Session, saga_id: str) -> list[Letter]:
    rows = s.scalars(select(DeadLetterRow).where(DeadLetterRow.saga_id == saga_id,
                                                 DeadLetterRow.kind == "event")).all()
    return [Letter(r.status, (r.kwargs.get("event") or {}).get("eventId") if isinstance(r.kwargs.get("event"), dict)
                   else None, (r.headers or {}).get("consumer"), r.exception) for r in rows]


def published_types(s: Session, saga_id: str) -> list[str]:
    """Event types published in the saga so far, oldest first (committed, plus this transaction's)."""
    return [t for t in s.scalars(select(EventRow.step).where(EventRow.saga_id == saga_id,
                                                             EventRow.type == "EventPublished")
                                 .order_by(EventRow.id)) if t]


def handled_types(s: Session, saga_id: str, consumer: str) -> list[str]:
    """Event types `consumer` has handled in the saga so far."""
    rows = s.execute(select(EventRow.step, EventRow.detail).where(
        EventRow.saga_id == saga_id, EventRow.type == "EventHandled").order_by(EventRow.id)).all()
    return [t for t, d in rows if t and (d or {}).get("consumer") == consumer]
