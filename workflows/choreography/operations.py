"""Operating choreographed sagas: redrive a dead-lettered event, find stuck sagas, trace a saga.

- `redrive` of a dead letter of kind 'event' (registered in `workflows.dead_letters.redrivers`):
  one transaction moves the dead letter OPEN -> REDRIVEN and writes the event again to the outbox
  for that one consumer; the relay sends it after commit. Once, and never lost.
- `sweep_choreographies` (registered in `workflows.sweeper.extra_detectors`, so `saga.sweep` on
  celery beat runs it): sends outbox rows a crashed publisher left, re-derives the state of FAILED
  sagas whose dead letters were discarded, sends again the deliveries of stuck sagas that never
  arrived, and returns the stuck sagas.
- `stuck_sagas`: choreographed sagas, not terminal, with no new event for longer than their
  choreography's deadline (`sagas.deadline_at` is pushed forward by every event).
- `trace`: each event of a saga with what caused it and where each of its deliveries stands.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflows.choreography import bus, history, outbox
from workflows.choreography.declaration import choreographies
from workflows.choreography.envelope import MalformedEvent, parse_envelope
from workflows.core.errors import InvalidOperation
from workflows.core.views import DeadLetterView, EventView
from workflows.runtime.container import Runtime, get_runtime

log = logging.getLogger("workflows.choreography")

OUTBOX_GRACE = 5.0
"""Seconds the sweeper leaves a fresh outbox row to its own publisher before sending it itself."""


def redrive_event(rt: Runtime, dl: DeadLetterView, who: str, reason: str) -> None:
    """Publish a dead-lettered event again, to the one consumer that gave up on it."""
    raw = dl.kwargs.get("event")
    consumer = (dl.headers or {}).get("consumer")
    try:
        event = parse_envelope(raw)
    except MalformedEvent as e:
        raise InvalidOperation(f"dead letter {dl.id} holds a malformed event ({e}); it can never be handled: "
                               "fix the publisher and discard it") from None
    if not consumer:
        raise InvalidOperation(f"dead letter {dl.id} does not say which consumer it was for")
    now = rt.clock()
    with rt.store.event_unit() as u:
        if not u.resolve_dead_letter(dl.id, status="REDRIVEN", resolution=f"redriven by {who}: {reason}".strip(": "),
                                     now=now):
            raise InvalidOperation(f"dead letter {dl.id} was handled already")
        outbox.write(u, event, [consumer], now, note_history=False)
        history.add(u, event.saga_id, "EventRedriven", now, step=event.event_type, event_id=event.event_id,
                    consumer=consumer, dead_letter=dl.id, who=who, reason=reason)
        if event.saga_type in choreographies:
            history.refresh(u, choreographies.get(event.saga_type), event.saga_id, now)
    outbox.relay(u.outbox_ids)


def stuck_sagas(rt: Runtime | None = None, now: datetime | None = None, limit: int = 500) -> list[str]:
    """Ids of choreographed sagas that saw no event for longer than their deadline."""
    rt = rt or get_runtime()
    return list(rt.store.stuck_choreographies(now or rt.clock(), limit))


def sweep_choreographies(rt: Runtime, now: datetime) -> list[str]:
    """The sweeper's part for choreographies; returns the stuck sagas (reported, their lost
    deliveries sent again).

    A runtime with no Celery app to send events with (app=None, the in-process tier) relays
    nothing and sends nothing again: it reports the stuck sagas, and leaves the outbox to a sweeper
    that can send."""
    can_send = bus.has_publisher()
    if not can_send:
        log.info("sweep: choreography outbox not relayed, stuck deliveries not resent: "
                 "this runtime has no Celery app to send events with")
    sent = 0
    try:
        if can_send:
            sent = outbox.relay_pending(older_than=OUTBOX_GRACE, now=now)
    except Exception as e:  # the broker is down: the next sweep tries again
        log.warning("outbox relay failed: %s", e)
    if sent:
        log.warning("sweep: relayed %d event(s) their publisher left unsent", sent)
    _refresh_failed(rt, now)
    stuck = stuck_sagas(rt, now)
    for saga_id in stuck if can_send else ():
        resent = resend_pending(rt, saga_id, now)
        log.warning("choreographed saga is stuck: no event before its deadline; %d delivery(ies) sent again",
                    resent, extra={"saga_id": saga_id})
    return stuck


def resend_pending(rt: Runtime, saga_id: str, now: datetime) -> int:
    """Send again each delivery of a stuck saga that was sent but never handled.

    A message can be lost on its way to a worker (a Redis consumer killed while its BRPOP
    returns); consumers are idempotent, so a second copy is safe. Rows the relay has not sent yet
    are left to the relay. The saga's deadline moves on: one resend per deadline period."""
    with rt.store.event_unit() as u:
        head = u.lock_saga(saga_id)
        if (head is None or head.state not in ("RUNNING", "COMPENSATING") or head.deadline_at is None
                or head.deadline_at >= now or head.saga_type not in choreographies):
            return 0
        ch = choreographies.get(head.saga_type)
        letters = history.letters(u, saga_id)
        pending = history.derive(ch, history.rows(u, saga_id), letters).pending
        open_letters = {(dl.event_id, dl.consumer) for dl in letters if dl.status == "OPEN"}
        sent: dict[str, dict[str, Any]] = {}
        unsent: set[str] = set()
        for r in u.outbox(saga_id):
            if r.sent_at is None:
                unsent.add(r.event_id)
            else:
                sent.setdefault(r.event_id, r.envelope)
        for event_id, consumer in pending:
            if event_id in unsent or event_id not in sent or (event_id, consumer) in open_letters:
                continue
            event = parse_envelope(sent[event_id])
            outbox.write(u, event, [consumer], now, note_history=False)
            history.add(u, saga_id, "DeliveryResent", now, step=event.event_type, event_id=event_id,
                        consumer=consumer, reason="no event before the saga's deadline")
        history.refresh(u, ch, saga_id, now)
    outbox.relay(u.outbox_ids)
    return len(u.outbox_ids)


def _refresh_failed(rt: Runtime, now: datetime) -> None:
    """A FAILED saga whose dead letter was discarded since its last change may not be FAILED any more."""
    for saga_id, saga_type in rt.store.failed_choreographies_with_discards(limit=200):
        if saga_type not in choreographies:
            continue
        with rt.store.event_unit() as u:
            history.refresh(u, choreographies.get(saga_type), saga_id, now)


# ------------------------------------------------------------------ trace


@dataclass(frozen=True)
class Delivery:
    consumer: str
    status: str
    """'pending', 'retrying', 'handled', 'dead-lettered', 'redriven' or 'discarded'."""
    attempts: int = 0
    error: str | None = None


@dataclass(frozen=True)
class TracedEvent:
    event_id: str
    event_type: str
    causation_id: str | None
    source: str
    at: datetime
    sent: bool
    payload: dict[str, Any]
    deliveries: list[Delivery] = field(default_factory=list)


def trace(saga_id: str) -> list[TracedEvent]:
    """Every event of the saga, oldest first, with the state of each of its deliveries."""
    store = get_runtime().store
    rows = store.history(saga_id)
    unsent = {r.event_id for r in store.outbox_of(saga_id) if r.sent_at is None}
    letters = history.as_letters(store.event_dead_letters(saga_id))
    state: dict[tuple[str | None, str | None], Delivery] = {}
    events: list[tuple[EventView, list[str]]] = []
    for r in rows:
        d = r.detail or {}
        key = (d.get("event_id"), d.get("consumer"))
        consumer = str(key[1] or "")
        if r.type == "EventPublished":
            events.append((r, list(d.get("consumers", []))))
        elif r.type == "EventHandled":
            state[key] = Delivery(consumer, "handled", r.attempt or 1)
        elif r.type == "EventAttemptFailed":
            state[key] = Delivery(consumer, "retrying" if d.get("retry_in") is not None else "failed",
                                  r.attempt or 0, d.get("error"))
        elif r.type == "EventRedriven":
            state[key] = Delivery(consumer, "redriven", 0)
    for dl in letters:
        key = (dl.event_id, dl.consumer)
        if dl.status in ("OPEN", "DISCARDED") and state.get(key, Delivery("", "")).status != "handled":
            old = state.get(key)
            state[key] = Delivery(dl.consumer or "", "dead-lettered" if dl.status == "OPEN" else "discarded",
                                  old.attempts if old else 0, dl.exception)
    out = []
    for r, consumers in events:
        d = r.detail
        out.append(TracedEvent(d["event_id"], r.step or "", d.get("causation_id"), d.get("source", ""), r.at,
                               d["event_id"] not in unsent, d.get("payload") or {},
                               [state.get((d["event_id"], c), Delivery(c, "pending")) for c in consumers]))
    return out


def format_trace(events: list[TracedEvent]) -> list[str]:
    """The trace as an indented tree (each event under the one whose handling published it)."""
    children: dict[str | None, list[TracedEvent]] = {}
    ids = {e.event_id for e in events}
    for e in events:
        children.setdefault(e.causation_id if e.causation_id in ids else None, []).append(e)
    t0 = events[0].at if events else None
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for e in children.get(parent, []):
            ms = (e.at - t0).total_seconds() * 1000 if t0 else 0.0
            got = ", ".join(_delivery(d) for d in e.deliveries) or "no subscriber"
            lines.append(f"{'   ' * depth}+{ms:6.0f} ms  {e.event_type}  by {e.source}  -> {got}"
                         + ("" if e.sent else "  [unsent]"))
            walk(e.event_id, depth + 1)

    walk(None, 0)
    return lines


def _delivery(d: Delivery) -> str:
    text = f"{d.consumer}: {d.status}"
    if d.attempts > 1:
        text += f" (attempt {d.attempts})"
    if d.error and d.status != "handled":
        text += f" ({d.error})"
    return text
