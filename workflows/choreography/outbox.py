"""Publishing atomically with the publisher's own effect: a transactional outbox.

`write` adds an event to the outbox and to the saga's history inside the caller's transaction:
the handler's effect, the events it emits and the record that it ran commit together or not at
all. `relay` sends rows to the broker right after that commit. A process that dies in between
leaves rows with `sent_at IS NULL`; they are sent by the next delivery of the same event (the
consumer sees it was handled and relays what it left behind) or by the sweeper (`relay_pending`,
on celery beat). Delivery is at least once; consumers are idempotent on (consumer, event id).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from workflows.store.db import session_factory
from workflows.choreography import bus, history
from workflows.choreography.envelope import Envelope
from workflows.choreography.models import OutboxRow

log = logging.getLogger("workflows.choreography")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def write(s: Session, event: Envelope, consumers: Sequence[str], now: datetime, *,
          note_history: bool = True) -> OutboxRow:
    """Add `event` to the outbox (and to the saga's history) in the transaction `s`."""
    wire = event.to_wire()
    row = OutboxRow(event_id=event.event_id, saga_id=event.saga_id, saga_type=event.saga_type,
                    event_type=event.event_type, causation_id=event.causation_id, source=event.source,
                    envelope=wire, targets=list(consumers), created_at=now,
                    sent_at=None if consumers else now, attempts=0)
    s.add(row)
    if note_history:
        history.add(s, event.saga_id, "EventPublished", now, step=event.event_type, event_id=event.event_id,
                    causation_id=event.causation_id, source=event.source, consumers=list(consumers),
                    payload=event.payload)
    return row


def relay(ids: Sequence[int]) -> int:
    """Send the unsent outbox rows among `ids` now. Returns how many were sent."""
    if not ids:
        return 0
    return _relay(select(OutboxRow).where(OutboxRow.id.in_(list(ids))))


def relay_left_by(consumer: str, event_id: str) -> int:
    """Send what `consumer`'s handling of `event_id` wrote but never sent (it died after commit)."""
    return _relay(select(OutboxRow).where(OutboxRow.causation_id == event_id, OutboxRow.source == consumer))


def relay_pending(*, older_than: float = 5.0, limit: int = 500,
                  now: datetime | None = None) -> int:
    """Send rows left unsent for more than `older_than` seconds (the sweeper's part)."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than)
    return _relay(select(OutboxRow).where(OutboxRow.created_at <= cutoff).limit(limit))


def _sessions():  # type: ignore[no-untyped-def]
    from workflows.runtime.container import get_runtime

    return session_factory(get_runtime().settings.resolved_database_url())


def _relay(query) -> int:  # type: ignore[no-untyped-def]
    """Lock the matching unsent rows (skipping rows another relay holds), send, mark sent."""
    app = bus.publisher()
    sent = 0
    with _sessions().begin() as s:
        rows = s.scalars(query.where(OutboxRow.sent_at.is_(None)).order_by(OutboxRow.id)
                         .with_for_update(skip_locked=True)).all()
        if not rows:
            return 0
        with app.producer_or_acquire() as producer:
            for row in rows:
                try:
                    for service in row.targets:
                        bus.send(app, row.envelope, service, producer=producer)
                except Exception as e:  # the broker is unreachable: keep the row for the next relay
                    row.attempts += 1
                    row.last_error = f"{type(e).__name__}: {e}"[:2000]
                    log.warning("could not relay %s %s: %s", row.event_type, row.event_id, e,
                                extra={"saga_id": row.saga_id, "step": row.event_type})
                    break
                row.sent_at = utcnow()
                sent += 1
    return sent
