"""Publishing: from a handler (into its transaction) or from anywhere else (a transaction of its own).

    @payment.subscribe("OrderCreated")
    def charge(ctx: EventContext, event: Envelope) -> None:
        ctx.session.add(Payment(...))                          # the service's effect ...
        ctx.publish("PaymentProcessed", {"payment_id": ...})   # ... and its event: one commit

    saga_id = shop.start("OrderCreated", order, idempotency_key=f"order-{order['order_id']}")
    publish("ShipmentDelivered", {...}, saga_id=saga_id)      # into a running saga, from anywhere

`publish()` inside a running handler is `ctx.publish()` (so handlers shaped like the seeds'
`await self.event_bus.publish(...)` stay transactional); the result can be awaited in an
`async def` handler. Outside a handler it is `publishing.publish_standalone`: it validates, writes
the outbox row and the history in one transaction (creating the saga on its first event), then
relays after commit.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

from workflows.choreography import history
from workflows.choreography.declaration import Choreography, choreographies
from workflows.choreography.envelope import Envelope, InvalidEvent, make_envelope
from workflows.choreography.publishing import Published, check_idempotency_key, publish_standalone, sealed_payload
from workflows.runtime.container import get_runtime
from workflows.store.events import EventUnit

_current: contextvars.ContextVar[EventContext | None] = contextvars.ContextVar("event_context", default=None)

__all__ = ["EventContext", "Published", "current", "publish"]


@dataclass
class EventContext:
    """What a handler gets besides the event: its transaction, and where its events go."""

    event: Envelope
    service: str
    choreography: Choreography
    unit: EventUnit
    """The store transaction the handling is recorded in (its events, history, derived state)."""
    attempt: int = 1
    """1 for the first try, 2 for the first retry, ..."""
    emitted: list[Envelope] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    """Ids of the orchestrated runs this handling started (`start_saga`)."""
    _locked: bool = False

    @property
    def session(self) -> Any:
        """The handler's transaction: write the service's effect here, it commits with the events."""
        return self.unit.session

    @property
    def saga_id(self) -> str:
        return self.event.saga_id

    @property
    def idempotency_key(self) -> str:
        """`<saga id>-<service>`: stable across retries, redeliveries and redrives."""
        return f"{self.event.saga_id}-{self.service}"

    def publish(self, event_type: str, payload: dict[str, Any]) -> Published:
        """Emit an event caused by the one being handled; sent once this handler's transaction commits."""
        clean = sealed_payload(self.choreography, event_type, payload)
        env = make_envelope(event_type, clean, saga_id=self.event.saga_id, saga_type=self.choreography.name,
                            source=self.service, causation_id=self.event.event_id,
                            traceparent=get_runtime().tracing.traceparent())
        self.emitted.append(env)
        return Published(env.event_id, event_type, env.saga_id)

    def start_saga(self, saga: Any, data: Any, *, saga_id: str | None = None, idempotency_key: str | None = None,
                   version: int | None = None) -> str:
        """Start an orchestrated saga (a `Saga` or its name) as this event's reaction. Returns its id.

        The run is written in this handler's transaction: it exists if and only if the handling
        commits, and its first step is sent after that commit. Its history's `SagaStarted` names this
        event as its cause (flow, choreographed saga id, event id and type, service); this saga's
        history gets `OrchestratedSagaStarted` naming the run. `idempotency_key` defaults to
        `<saga id>-<service>-<saga name>`, so a retried handling finds the run it started."""
        from workflows.choreography.reactions import start_saga

        return start_saga(self, saga, data, saga_id=saga_id, idempotency_key=idempotency_key, version=version)

    def handled(self, event_type: str) -> bool:
        """Has this service already handled an event of that type in this saga? (Locks the saga:
        handlers of one saga that ask this run one after the other, so a join fires once.)"""
        self._lock()
        return event_type in history.handled_types(self.unit, self.saga_id, self.service)

    def published(self, event_type: str) -> bool:
        """Has an event of that type been published in this saga (committed, or by this handler)?"""
        self._lock()
        return (event_type in history.published_types(self.unit, self.saga_id)
                or any(e.event_type == event_type for e in self.emitted))

    def _lock(self) -> None:
        if not self._locked:
            self.unit.lock_saga(self.saga_id)
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
    check_idempotency_key(idempotency_key)
    existing_type = None if saga_id is None else get_runtime().store.saga_type(saga_id)
    if existing_type is None and name is None:
        raise InvalidEvent(f"no saga {saga_id!r}: to start one, name its choreography" if saga_id else
                           "publish needs the saga_id of a running saga, or a choreography to start one")
    ch = choreographies.get(existing_type or name)  # type: ignore[arg-type]
    return publish_standalone(ch, event_type, payload, saga_id=saga_id, causation_id=causation_id,
                              idempotency_key=idempotency_key, source=source, create=existing_type is None)
