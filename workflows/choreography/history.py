"""A choreographed saga's history and the state derived from it.

Every event published and every delivery handled is a row of `saga_events`, written in the
transaction that did it (a store `EventUnit`); after each write the saga's state is derived again
from those rows (`derive`, a pure function) and stored in `sagas.state`, under the saga row's lock. So
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
from typing import Any, Protocol

from workflows.core.state import RunStatus
from workflows.core.views import DeadLetterView
from workflows.store.events import EventUnit

STATE_EVENTS = {
    RunStatus.COMPLETED: "SagaCompleted",
    RunStatus.COMPENSATING: "CompensationStarted",
    RunStatus.COMPENSATED: "SagaCompensated",
    RunStatus.FAILED: "SagaFailed",
    RunStatus.RUNNING: "SagaResumed",
}


class Meanings(Protocol):
    """What derivation reads of a choreography's declaration (a `declaration.Choreography`)."""

    @property
    def completed(self) -> Iterable[str]: ...

    @property
    def compensating(self) -> Iterable[str]: ...

    @property
    def compensated(self) -> Iterable[str]: ...

    @property
    def failed(self) -> Iterable[str]: ...

    @property
    def deadline(self) -> float: ...


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


def derive(ch: Meanings, rows: Sequence[Row], letters: Iterable[Letter] = ()) -> Derived:
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


# ------------------------------------------------------------------ inside the caller's unit (one transaction)


def add(u: EventUnit, saga_id: str, type_: str, now: datetime, *, step: str | None = None,
        attempt: int | None = None, **detail: Any) -> None:
    u.add_history(saga_id, type_, now, step=step, attempt=attempt, detail=detail)


def refresh(u: EventUnit, ch: Meanings, saga_id: str, now: datetime) -> Derived | None:
    """Derive the saga's state again and store it, noting a change in the history.

    Call after this unit's history rows are added: they are read back with the rows other
    transactions committed before the saga's lock was granted.
    """
    head = u.lock_saga(saga_id)
    if head is None:
        return None
    derived = derive(ch, rows(u, saga_id), letters(u, saga_id))
    if derived.status.value != head.state:
        add(u, saga_id, STATE_EVENTS[derived.status], now, reason=derived.reason, previous=head.state)
    u.set_state(saga_id, state=derived.status.value, failure_reason=derived.reason, now=now,
                deadline_at=None if derived.status.terminal else now + timedelta(seconds=ch.deadline))
    return derived


def rows(u: EventUnit, saga_id: str) -> list[Row]:
    """The history rows derivation reads (this unit's included)."""
    return [Row(e.type, e.step, e.detail or {}) for e in u.history(saga_id, ("EventPublished", "EventHandled"))]


def letters(u: EventUnit, saga_id: str) -> list[Letter]:
    return as_letters(u.event_dead_letters(saga_id))


def as_letters(dead_letters: Iterable[DeadLetterView]) -> list[Letter]:
    """What derivation reads of the saga's event dead letters: which delivery each one holds."""
    out = []
    for dl in dead_letters:
        event = (dl.kwargs or {}).get("event")
        out.append(Letter(dl.status, event.get("eventId") if isinstance(event, dict) else None,
                          (dl.headers or {}).get("consumer"), dl.exception))
    return out


def published_types(u: EventUnit, saga_id: str) -> list[str]:
    """Event types published in the saga so far, oldest first (committed, plus this unit's)."""
    return [e.step for e in u.history(saga_id, ("EventPublished",)) if e.step]


def handled_types(u: EventUnit, saga_id: str, consumer: str) -> list[str]:
    """Event types `consumer` has handled in the saga so far."""
    return [e.step for e in u.history(saga_id, ("EventHandled",)) if e.step and e.detail.get("consumer") == consumer]
