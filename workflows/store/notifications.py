"""The store's part of the notifications (`workflows.notifications`): events that need a person and
their delivery attempts.

A notification is recorded once by its dedup key (the primary key: a second insert of the same key
is "already recorded", nothing changes). A deliverer claims a due one (`claim_notification`: one
conditional UPDATE moves its next attempt past a lease, so two sweepers do not send it at the same
time), sends it, and records the attempt (`notification_attempted`), which also marks it DELIVERED or
sets its next attempt (the backoff).
"""
from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from workflows.store.db import statement_engine
from workflows.store.models import NotificationAttemptRow, NotificationRow, SagaRow

NOTIFICATIONS = NotificationRow.__table__
ATTEMPTS = NotificationAttemptRow.__table__
PENDING, DELIVERED, LOGGED = "PENDING", "DELIVERED", "LOGGED"
"""A notification's states: the webhook has not answered 2xx yet; it has; no webhook is configured."""


@dataclass(frozen=True)
class NewNotification:
    """An event to record: its dedup key, kind, run, and the body the webhook receives."""

    id: str
    kind: str
    saga_id: str
    saga_type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class NotificationRecord:
    id: str
    kind: str
    saga_id: str
    saga_type: str
    body: dict[str, Any]
    state: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True)
class AttemptRecord:
    notification_id: str
    target: str
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class IdleRun:
    """A non-terminal run and when it last changed (`runs_without_progress`)."""

    saga_id: str
    saga_type: str
    saga_version: int
    version: int
    state: str
    updated_at: datetime


def _record(r: Any) -> NotificationRecord:
    return NotificationRecord(r.id, r.kind, r.saga_id, r.saga_type, dict(r.body), r.state, r.attempts,
                              r.next_attempt_at, r.created_at, r.delivered_at)


class NotificationRows:
    url: str
    sessions: sessionmaker[Session]

    def record_notifications(self, notices: Sequence[NewNotification], *, state: str,
                             now: datetime) -> builtins.list[str]:
        """Insert each notice not recorded yet (its key is the primary key); returns the ids inserted
        now. A notice already recorded (a resend, a second sweeper) changes nothing."""
        inserted: list[str] = []
        for n in notices:
            try:
                with self.sessions.begin() as s:
                    s.execute(insert(NOTIFICATIONS).values(
                        id=n.id, kind=n.kind, saga_id=n.saga_id, saga_type=n.saga_type, body=n.body, state=state,
                        attempts=0, next_attempt_at=now, created_at=now,
                        delivered_at=now if state != PENDING else None))
                inserted.append(n.id)
            except IntegrityError:
                continue  # recorded before: once is enough
        return inserted

    def recorded_notifications(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are recorded already (one statement): the sweeper skips them."""
        if not ids:
            return set()
        with statement_engine(self.url).connect() as c:
            return {str(i) for i in c.scalars(select(NOTIFICATIONS.c.id).where(NOTIFICATIONS.c.id.in_(list(ids))))}

    def due_notifications(self, now: datetime, limit: int = 100) -> builtins.list[str]:
        """Ids of the notifications the webhook has not taken yet whose next attempt is due, oldest first."""
        q = (select(NOTIFICATIONS.c.id).where(NOTIFICATIONS.c.state == PENDING, NOTIFICATIONS.c.next_attempt_at <= now)
             .order_by(NOTIFICATIONS.c.next_attempt_at, NOTIFICATIONS.c.id).limit(limit))
        with statement_engine(self.url).connect() as c:
            return [str(i) for i in c.scalars(q)]

    def claim_notification(self, notification_id: str, now: datetime,
                           lease_until: datetime) -> NotificationRecord | None:
        """The notification, if it is due at `now` and this caller got it: its next attempt moved to
        `lease_until` (another deliverer finds it not due). None: delivered, not due, or claimed."""
        with self.sessions.begin() as s:
            done = s.execute(update(NOTIFICATIONS)
                             .where(NOTIFICATIONS.c.id == notification_id, NOTIFICATIONS.c.state == PENDING,
                                    NOTIFICATIONS.c.next_attempt_at <= now)
                             .values(next_attempt_at=lease_until))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = s.execute(select(NOTIFICATIONS).where(NOTIFICATIONS.c.id == notification_id)).one()
            return _record(row)

    def notification_attempted(self, notification_id: str, *, target: str, at: datetime, ok: bool,
                               status_code: int | None = None, error: str | None = None,
                               next_attempt_at: datetime | None = None) -> None:
        """Keep one attempt; for the webhook also count it, and mark the notification DELIVERED (`ok`)
        or due again at `next_attempt_at`."""
        with self.sessions.begin() as s:
            s.execute(insert(ATTEMPTS).values(notification_id=notification_id, target=target, at=at, ok=ok,
                                              status_code=status_code, error=error))
            if target != "webhook":
                return
            values: dict[str, Any] = {"attempts": NOTIFICATIONS.c.attempts + 1}
            if ok:
                values.update(state=DELIVERED, delivered_at=at)
            elif next_attempt_at is not None:
                values.update(next_attempt_at=next_attempt_at)
            s.execute(update(NOTIFICATIONS).where(NOTIFICATIONS.c.id == notification_id).values(**values))

    def notifications(self, *, saga_id: str | None = None, state: str | None = None,
                      limit: int = 100) -> builtins.list[NotificationRecord]:
        """Newest first; of one run, or in one state."""
        q = select(NOTIFICATIONS).order_by(NOTIFICATIONS.c.created_at.desc(), NOTIFICATIONS.c.id).limit(limit)
        if saga_id is not None:
            q = q.where(NOTIFICATIONS.c.saga_id == saga_id)
        if state is not None:
            q = q.where(NOTIFICATIONS.c.state == state)
        with statement_engine(self.url).connect() as c:
            return [_record(r) for r in c.execute(q)]

    def notification_attempts(self, ids: Sequence[str]) -> dict[str, builtins.list[AttemptRecord]]:
        """Every attempt of each of `ids`, oldest first."""
        out: dict[str, list[AttemptRecord]] = {i: [] for i in ids}
        if not ids:
            return out
        q = select(ATTEMPTS).where(ATTEMPTS.c.notification_id.in_(list(ids))).order_by(ATTEMPTS.c.id)
        with statement_engine(self.url).connect() as c:
            for r in c.execute(q):
                out[r.notification_id].append(AttemptRecord(r.notification_id, r.target, r.at, bool(r.ok),
                                                            r.status_code, r.error))
        return out

    def notification_counts(self) -> dict[str, int]:
        """Notifications by state (the metric `saga_notifications`)."""
        q = select(NOTIFICATIONS.c.state, func.count()).group_by(NOTIFICATIONS.c.state)
        with statement_engine(self.url).connect() as c:
            return {str(state): int(n) for state, n in c.execute(q)}

    def runs_without_progress(self, updated_before: datetime, limit: int = 500) -> builtins.list[IdleRun]:
        """RUNNING and COMPENSATING runs not changed since `updated_before`, oldest first (a WAITING or
        SCHEDULED run is parked on purpose; a terminal one is done)."""
        sagas = SagaRow.__table__
        q = (select(sagas.c.id, sagas.c.saga_type, sagas.c.saga_version, sagas.c.version, sagas.c.state,
                    sagas.c.updated_at)
             .where(sagas.c.state.in_(("RUNNING", "COMPENSATING")), sagas.c.updated_at < updated_before,
                    sagas.c.style == "orchestrated")
             .order_by(sagas.c.updated_at).limit(limit))
        with statement_engine(self.url).connect() as c:
            return [IdleRun(r.id, r.saga_type, r.saga_version, r.version, r.state, r.updated_at) for r in c.execute(q)]
