"""Publishing outside a handler: a transaction of its own, the saga created by its first event.

    saga_id = shop.start("OrderCreated", order, idempotency_key=f"order-{order['order_id']}")

`publish_standalone` validates the event, then in one store unit writes the saga row (for a first
event), the outbox row and the history, and derives the saga's state; it relays after commit.
It is given the choreography itself (`Choreography.start` passes itself, `context.publish` looks
it up), so it needs neither the registry nor the handler's context.
"""
from __future__ import annotations

import uuid
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from workflows.choreography import history, outbox
from workflows.choreography.envelope import Envelope, InvalidEvent, make_envelope
from workflows.core.errors import SagaIdTaken
from workflows.runtime.container import get_runtime
from workflows.runtime.sealing import seal_paths
from workflows.store.base import SagaStore
from workflows.store.events import EventUnit, SagaRowTaken

if TYPE_CHECKING:
    from workflows.store.base import CallerTx


@dataclass(frozen=True)
class Published:
    """An event accepted for publishing (committed to the outbox). Awaitable, for async handlers."""

    event_id: str
    event_type: str
    saga_id: str

    def __await__(self) -> Generator[Any, None, Published]:
        yield from ()  # a generator that yields nothing: `await published` is `published`
        return self


class Publishable(history.Meanings, Protocol):
    """What publishing reads of a choreography (a `declaration.Choreography`)."""

    @property
    def name(self) -> str: ...

    def validate(self, event_type: str, payload: dict[str, Any]) -> dict[str, Any]: ...

    def consumers(self, event_type: str) -> list[str]: ...

    def sensitive_paths(self, event_type: str) -> tuple[str, ...]: ...


def sealed_payload(ch: Publishable, event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` validated in clear, then with its sensitive fields sealed: what is written to the
    outbox and the history and sent on the bus. Raises `InvalidEvent`, or `SealingError` (no key)."""
    clean = ch.validate(event_type, payload)
    return seal_paths(get_runtime().sealer, f"choreography {ch.name!r} event {event_type!r}",
                      ch.sensitive_paths(event_type), clean)


def check_idempotency_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise InvalidEvent("idempotency_key must be a non-empty string of at most 200 characters")


def start(ch: Publishable, event_type: str, payload: dict[str, Any], *, saga_id: str | None = None,
          idempotency_key: str | None = None, tx: CallerTx | None = None) -> str:
    """Start a saga of `ch` by publishing its first event. Returns the saga id.

    With the `saga_id` of an existing saga of `ch`, the event is published into it instead. With
    `tx` (the caller's SQLAlchemy Session or Connection) the saga row, the outbox row and the history
    are written in a savepoint of the caller's transaction and relayed after it commits."""
    check_idempotency_key(idempotency_key)
    store = get_runtime().store
    existing = None if saga_id is None else store.saga_type(saga_id) if tx is None else store.saga_type_in(tx, saga_id)
    if existing is not None and existing != ch.name:
        raise InvalidEvent(f"saga {saga_id} is a {existing}, not a {ch.name}")
    return publish_standalone(ch, event_type, payload, saga_id=saga_id, causation_id=None,
                              idempotency_key=idempotency_key, source="client", create=existing is None,
                              tx=tx).saga_id


def publish_standalone(ch: Publishable, event_type: str, payload: dict[str, Any], *, saga_id: str | None,
                       causation_id: str | None, idempotency_key: str | None, source: str,
                       create: bool, tx: CallerTx | None = None) -> Published:
    """Publish into saga `saga_id` of `ch`, or (`create`) start it (a new id if None) with this event.

    With `tx` the unit is a savepoint of the caller's transaction (a taken key or id rolls back to
    it, leaving the caller's transaction usable) and the outbox rows are relayed once the caller's
    transaction committed; a relay that never happens (the process died) is the outbox sweeper's."""
    rt = get_runtime()
    check_idempotency_key(idempotency_key)
    now = rt.clock()
    clean = sealed_payload(ch, event_type, payload)
    env = make_envelope(event_type, clean, saga_id=saga_id or str(uuid.uuid4()), saga_type=ch.name, source=source,
                        causation_id=causation_id, now=now, traceparent=rt.tracing.traceparent())
    try:
        with (rt.store.event_unit() if tx is None else rt.store.event_unit_in(tx)) as u:
            if create:
                _create_saga(u, ch, env, idempotency_key, now)
            outbox.write(u, env, ch.consumers(event_type), now)
            history.refresh(u, ch, env.saga_id, now)
    except SagaRowTaken as e:
        if idempotency_key is None:
            raise SagaIdTaken(f"a saga with id {env.saga_id!r} exists already; choose another id") from e
        return _already_started(rt.store, ch, idempotency_key, clean, tx)
    ids = u.outbox_ids
    if tx is None:
        outbox.relay(ids)
    else:  # rows a rolled-back savepoint took with it are not among the unsent ones: nothing to check
        rt.store.after_commit(tx, lambda: outbox.relay(ids))
    return Published(env.event_id, event_type, env.saga_id)


def _create_saga(u: EventUnit, ch: Publishable, env: Envelope, idempotency_key: str | None, now: datetime) -> None:
    # A taken id or idempotency key fails here, before anything else is written.
    u.create_saga(saga_id=env.saga_id, saga_type=ch.name, input=env.payload, idempotency_key=idempotency_key,
                  now=now)
    history.add(u, env.saga_id, "SagaCreated", now, saga_type=ch.name, style="choreographed",
                idempotency_key=idempotency_key, first_event=env.event_type)


def _already_started(store: SagaStore, ch: Publishable, key: str, payload: dict[str, Any],
                     tx: CallerTx | None = None) -> Published:
    if tx is None:
        saga_id = store.run_for_key(key, ch.name, payload)
    else:  # read on the caller's connection: it sees its own uncommitted saga (and holds SQLite's lock)
        saga_id = store.run_for_key_in(tx, key, ch.name, payload)
    if saga_id is None:
        raise InvalidEvent(f"could not start a saga with idempotency key {key!r}") from None
    if tx is None:
        first = next(iter(store.outbox_of(saga_id, limit=1)), None)
    else:
        with store.event_unit_in(tx) as u:
            first = next(iter(u.outbox(saga_id)), None)
    return Published(first.event_id if first else "", first.event_type if first else "", saga_id)
