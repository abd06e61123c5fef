"""Publishing: from a handler (into its transaction) or from anywhere else (a transaction of its own).

    @payment.subscribe("OrderCreated")
    def charge(ctx: EventContext, event: Envelope) -> None:
        ctx.session.add(Payment(...))                          # the service's effect ...
        ctx.publish("PaymentProcessed", {"payment_id": ...})   # ... and its event: one commit

    saga_id = shop.start("OrderCreated", order, idempotency_key=f"order-{order['order_id']}")
    publish("ShipmentDelivered", {...}, saga_id=saga_id)      # into a running saga, from anywhere

`publish()` inside a running handler is `ctx.publish()` (so handlers shaped like the seeds'
`await self.event_bus.publish(...)` stay transactional); the result can be awaited in an
`async def` handler. Outside a handler it validates, writes the outbox row and the history in one
transaction (creating the saga on its first event), then relays after commit.
"""
from __future__ import annotations

import contextvars
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workflows.core.engine import RunStatus
from workflows.store.models import SagaRow
from workflows.store.sql import input_hash
from workflows.choreography import history, outbox
from workflows.choreography.declaration import Choreography, choreographies
from workflows.choreography.envelope import Envelope, InvalidEvent, make_envelope
from workflows.choreography.models import OutboxRow

_current: contextvars.ContextVar[EventContext | None] = contextvars.ContextVar("event_context", default=None)


@dataclass(frozen=True)
class Published:
    """An event accepted for publishing (committed to the outbox). Awaitable, for async handlers."""

    event_id: str
    event_type: str
    saga_id: str

    def __await__(self) -> Generator[Any, None, Published]:
        return self
        yield  # pragma: no cover  (makes this a generator)


@dataclass
class EventContext:
    """What a handler gets besides the event: its transaction, and where its events go."""

    event: Envelope
    service: str
    choreography: Choreography
    session: Session
    """The handler's transaction: write the service's effect here, it commits with the events."""
    attempt: int = 1
    """1 for the first try, 2 for the first retry, ..."""
    emitted: list[Envelope] = field(default_factory=list)
    _locked: bool = False

    @property
    def saga_id(self) -> str:
        return self.event.saga_id

    @property
    def idempotency_key(self) -> str:
        """`<saga id>-<service>`: stable across retries, redeliveries and redrives."""
        return f"{self.event.saga_id}-{self.service}"

    def publish(self, event_type: str, payload: dict[str, Any]) -> Published:
        """Emit an event caused by the one being handled; sent once this handler's transaction commits."""
        clean = self.choreography.validate(event_type, payload)
        env = make_envelope(event_type, clean, saga_id=self.event.saga_id, saga_type=self.choreography.name,
                            source=self.service, causation_id=self.event.event_id)
        self.emitted.append(env)
        return Published(env.event_id, event_type, env.saga_id)

    def handled(self, event_type: str) -> bool:
        """Has this service already handled an event of that type in this saga? (Locks the saga:
        handlers of one saga that ask this run one after the other, so a join fires once.)"""
        self._lock()
        return event_type in history.handled_types(self.session, self.saga_id, self.service)

    def published(self, event_type: str) -> bool:
        """Has an event of that type been published in this saga (committed, or by this handler)?"""
        self._lock()
        return (event_type in history.published_types(self.session, self.saga_id)
                or any(e.event_type == event_type for e in self.emitted))

    def _lock(self) -> None:
        if not self._locked:
            history.lock_saga(self.session, self.saga_id)
            self._locked = True


def current() -> EventContext | None:
    """The context of the handler running in this thread, if any."""
    return _current.get()


def publish(event_type: str, payload: dict[str, Any], *, saga_id: str | None = None,
            causation_id: str | None = None, choreography: str | Choreography | None = None,
            idempotency_key: str | None = None, source: str = "client") -> Published:
    """Publish an event: into the running handler's transaction, or in a transaction of its own.

    Outside a handler: `saga_id` names a running saga; or, with `choreography`, a new saga is
    created by this first event (with `idempotency_key`, publishing it again returns the first
    event instead of starting a second saga; with other content it raises `IdempotencyConflict`).
    """
    ctx = _current.get()
    if ctx is not None and saga_id in (None, ctx.saga_id) and causation_id in (None, ctx.event.event_id):
        return ctx.publish(event_type, payload)
    name = choreography.name if isinstance(choreography, Choreography) else choreography
    return _publish_standalone(event_type, payload, saga_id=saga_id, causation_id=causation_id,
                               choreography=name, idempotency_key=idempotency_key, source=source)


def start(ch: Choreography, event_type: str, payload: dict[str, Any], *, saga_id: str | None = None,
          idempotency_key: str | None = None) -> str:
    """Start a saga of `ch` by publishing its first event. Returns the saga id."""
    return _publish_standalone(event_type, payload, saga_id=saga_id, causation_id=None, choreography=ch.name,
                               idempotency_key=idempotency_key, source="client").saga_id


def _publish_standalone(event_type: str, payload: dict[str, Any], *, saga_id: str | None,
                        causation_id: str | None, choreography: str | None, idempotency_key: str | None,
                        source: str) -> Published:
    import uuid

    from workflows.runtime.container import get_runtime

    store = get_runtime().store
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200):
        raise InvalidEvent("idempotency_key must be a non-empty string of at most 200 characters")
    now = outbox.utcnow()
    existing_type = None
    if saga_id is not None:
        with store.sessions() as s:
            existing_type = s.scalar(select(SagaRow.saga_type).where(SagaRow.id == saga_id))
    if existing_type is None and choreography is None:
        raise InvalidEvent(f"no saga {saga_id!r}: to start one, name its choreography" if saga_id else
                           "publish needs the saga_id of a running saga, or a choreography to start one")
    ch = choreographies.get(existing_type or choreography)  # type: ignore[arg-type]
    clean = ch.validate(event_type, payload)
    env = make_envelope(event_type, clean, saga_id=saga_id or str(uuid.uuid4()), saga_type=ch.name, source=source,
                        causation_id=causation_id, now=now)
    try:
        with store.sessions.begin() as s:
            if existing_type is None:
                _create_saga(s, ch, env, idempotency_key, now)
            row = outbox.write(s, env, ch.consumers(event_type), now)
            history.refresh(s, ch, env.saga_id, now)
    except IntegrityError:
        if idempotency_key is None:
            raise
        return _already_started(store, ch, idempotency_key, clean)
    outbox.relay([row.id])
    return Published(env.event_id, event_type, env.saga_id)


def _create_saga(s: Session, ch: Choreography, env: Envelope, idempotency_key: str | None, now: datetime) -> None:
    s.add(SagaRow(id=env.saga_id, saga_type=ch.name, style="choreographed", state=RunStatus.RUNNING.value,
                  input=env.payload, input_hash=input_hash(ch.name, env.payload), idempotency_key=idempotency_key,
                  caused_by=None, created_at=now, updated_at=now, failure_reason=None, deadline_at=None))
    s.flush()  # a duplicate idempotency key fails here, before anything else is written
    history.add(s, env.saga_id, "SagaCreated", now, saga_type=ch.name, style="choreographed",
                idempotency_key=idempotency_key, first_event=env.event_type)


def _already_started(store: Any, ch: Choreography, key: str, payload: dict[str, Any]) -> Published:
    saga_id = store.run_for_key(key, ch.name, payload)
    if saga_id is None:
        raise InvalidEvent(f"could not start a saga with idempotency key {key!r}") from None
    with store.sessions() as s:
        first = s.scalars(select(OutboxRow).where(OutboxRow.saga_id == saga_id).order_by(OutboxRow.id)).first()
    return Published(first.event_id if first else "", first.event_type if first else "", saga_id)
