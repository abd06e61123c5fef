"""Publishing atomically with the publisher's own effect: a transactional outbox.

`write` adds an event to the outbox and to the saga's history inside the caller's unit (a store
transaction): the handler's effect, the events it emits and the record that it ran commit
together or not at all. `relay` sends rows to the broker right after that commit, outside any
transaction: it reads the unsent rows, sends them, then marks them sent in a second statement. A
process that dies in between leaves rows with `sent_at IS NULL`; they are sent by the next
delivery of the same event (the consumer sees it was handled and relays what it left behind) or
by the sweeper (`relay_pending`, on celery beat). Delivery is at least once (two relays racing
for one row both send it); consumers are idempotent on (consumer, event id).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from workflows.choreography import bus, history
from workflows.choreography.envelope import Envelope
from workflows.runtime.container import get_runtime
from workflows.store.events import EventUnit, OutboxRecord

log = logging.getLogger("workflows.choreography")


def write(u: EventUnit, event: Envelope, consumers: Sequence[str], now: datetime, *,
          note_history: bool = True) -> None:
    """Add `event` to the outbox (and to the saga's history) in the unit `u`; after it commits,
    `u.outbox_ids` names the rows to `relay`."""
    u.write_outbox(event_id=event.event_id, saga_id=event.saga_id, saga_type=event.saga_type,
                   event_type=event.event_type, causation_id=event.causation_id, source=event.source,
                   envelope=event.to_wire(), targets=list(consumers), now=now)
    if note_history:
        history.add(u, event.saga_id, "EventPublished", now, step=event.event_type, event_id=event.event_id,
                    causation_id=event.causation_id, source=event.source, consumers=list(consumers),
                    payload=event.payload)


def relay(ids: Sequence[int]) -> int:
    """Send the unsent outbox rows among `ids` now. Returns how many were sent."""
    if not ids:
        return 0
    return _relay(get_runtime().store.unsent_outbox(ids=ids, limit=len(ids)))


def relay_left_by(consumer: str, event_id: str) -> int:
    """Send what `consumer`'s handling of `event_id` wrote but never sent (it died after commit)."""
    return _relay(get_runtime().store.unsent_outbox(causation_id=event_id, source=consumer))


def relay_pending(*, older_than: float = 5.0, limit: int = 500,
                  now: datetime | None = None) -> int:
    """Send rows left unsent for more than `older_than` seconds (the sweeper's part)."""
    cutoff = (now or get_runtime().clock()) - timedelta(seconds=older_than)
    return _relay(get_runtime().store.unsent_outbox(created_up_to=cutoff, limit=limit))


def _relay(rows: Sequence[OutboxRecord]) -> int:
    """Send `rows` (read before, no transaction open), then mark the ones sent in one statement.

    A broker error keeps its row, and the ones after it, for the next relay."""
    if not rows:
        return 0
    rt = get_runtime()
    app = bus.publisher()
    sent: list[int] = []
    try:
        with app.producer_or_acquire() as producer:
            for row in rows:
                try:
                    for service in row.targets:
                        bus.send(app, row.envelope, service, producer=producer)
                except Exception as e:  # the broker is unreachable: keep the row for the next relay
                    rt.store.outbox_send_failed(row.id, f"{type(e).__name__}: {e}")
                    log.warning("could not relay %s %s: %s", row.event_type, row.event_id, e,
                                extra={"saga_id": row.saga_id, "step": row.event_type})
                    break
                sent.append(row.id)
    finally:
        rt.store.mark_outbox_sent(sent, rt.clock())
    return len(sent)
