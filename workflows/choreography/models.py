"""The transactional outbox: events written in the publisher's own transaction, sent after commit.

On the saga store's `Base`, so Alembic sees it (migration 0002). The consumer side of
exactly-once effects is the existing `processed_events` table (`workflows.models`).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from workflows.store.models import Base, BigId, JSONType


class OutboxRow(Base):
    """One event to deliver to its consumers. Written with the effect that caused it; relayed to
    the broker right after commit, or by the sweeper when the publisher died before that."""

    __tablename__ = "event_outbox"
    __table_args__ = (
        Index("ix_event_outbox_unsent", "sent_at", "id"),
        Index("ix_event_outbox_saga", "saga_id", "id"),
        Index("ix_event_outbox_causation", "causation_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))
    """Not unique: a redrive re-sends the same event to one consumer in a row of its own."""
    saga_id: Mapped[str] = mapped_column(String(64))
    saga_type: Mapped[str] = mapped_column(String(100))
    event_type: Mapped[str] = mapped_column(String(100))
    causation_id: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(100))
    """The service whose handler published it ('client' outside any handler)."""
    envelope: Mapped[dict[str, Any]] = mapped_column(JSONType)
    """The full envelope, as sent (wire form)."""
    targets: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    """Consumers (service names) to deliver to, fixed when written."""
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    """When the relay published it to every target. NULL: still to send."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Failed relay attempts (broker unreachable)."""
    last_error: Mapped[str | None] = mapped_column(Text)
