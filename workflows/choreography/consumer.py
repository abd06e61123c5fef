"""The body of every event consumer task `events.<service>`: check, handle once, record, relay.

For one delivery of one event to one service:
1. Validate the envelope, its choreography, its saga and the payload; no handler or a malformed
   event is dead-lettered with the reason (never retried, never dropped, the worker goes on).
2. Already in `processed_events` for (service, event id): a duplicate. Nothing runs again; what
   the first handling wrote to the outbox but did not send (it died after commit) is sent now.
3. Otherwise run the handler in one transaction with: its effect, the events it emits (outbox),
   the (service, event id) row, the history rows and the derived saga state. Commit, then relay.
4. A handler error is retried with Celery's `self.retry(countdown=...)` by the subscription's
   `RetryPolicy`; when retries run out (or the error is permanent) the delivery is dead-lettered
   (its row committed with the saga's FAILED state, then its copy on the `dead_letter` queue)
   and the saga stays FAILED until an operator redrives it.
Every write goes through the store (`store.event_unit()`); nothing is published while a
transaction is open. The message is acknowledged late, after all of that: a worker killed at any
line redelivers it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import traceback as tb
from dataclasses import replace
from datetime import timedelta
from typing import Any

from celery import Task

from workflows.choreography import bus, history, outbox
from workflows.choreography.context import EventContext, _current
from workflows.choreography.declaration import Choreography, Subscription, choreographies
from workflows.choreography.envelope import Envelope, InvalidEvent, MalformedEvent, parse_envelope, salvage
from workflows.core.errors import UnknownSaga
from workflows.core.retry import RetryVerdict, retry_verdict
from workflows.core.state import DeadLetter, ErrorInfo, MessageInfo
from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.delivery import INFRASTRUCTURE_ERRORS
from workflows.runtime.sealing import open_input
from workflows.store.events import EventAlreadyProcessed

log = logging.getLogger("workflows.choreography")

FAULT_VARIABLE = "SAGA_FAULT_KILL_AFTER_COMMIT"
"""Fault injection for tests and demos: `service:EventType` makes the handling process exit right
after its commit, before the relay; `service:EventType:worker` kills the whole worker."""


def consume(task: Task, service: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    rt = get_runtime()
    raw = kwargs.get("event")
    attempt = kwargs.get("attempt", 1)
    message = MessageInfo(task_name=task.name, queue=bus.queue_name(service), args=list(args), kwargs=dict(kwargs),
                          headers={"task_id": task.request.id, "retries": task.request.retries, "consumer": service})
    try:
        if not isinstance(attempt, int) or attempt < 1:
            raise MalformedEvent(f"attempt must be a positive integer, got {attempt!r}")
        event = parse_envelope(raw)
        ch, sub = _route(rt, service, event)
    except (MalformedEvent, InvalidEvent, UnknownSaga) as e:
        log.error("event refused by %s: %s", service, e, extra={"saga_id": salvage(raw)[0], "step": None})
        dead_letter(rt, service, None, raw, message, ErrorInfo(type(e).__name__, str(e)), attempts=0)
        return {"refused": str(e)}

    if rt.store.event_processed(service, event.event_id):
        return _duplicate(rt, service, event)
    try:
        with rt.tracing.event(service, event):  # the handler's spans, and the events it publishes, join its trace
            ids = _handle(rt, ch, sub, event, attempt)
    except EventAlreadyProcessed:
        return _duplicate(rt, service, event)
    except INFRASTRUCTURE_ERRORS:
        raise  # the database or broker is down: Celery's autoretry, the handler's attempts untouched
    except Exception as exc:  # the handler's own error: its RetryPolicy decides
        retryable = sub.retry.is_retryable(exc) and not isinstance(exc, InvalidEvent)
        error = ErrorInfo(type(exc).__name__, str(exc))
        if retry_verdict(sub.retry, attempt, retryable=retryable) is RetryVerdict.RETRY:
            countdown = sub.retry.countdown(attempt)
            _note(rt, event, "EventAttemptFailed", attempt, consumer=service, error=str(error),
                  retry_in=round(countdown, 3), waiting=(ch, countdown))
            raise task.retry(args=list(args), kwargs={**kwargs, "attempt": attempt + 1}, countdown=countdown,
                             exc=exc) from None
        _note(rt, event, "EventAttemptFailed", attempt, consumer=service, error=str(error), retry_in=None)
        dead_letter(rt, service, event, raw, message, replace(error, traceback=tb.format_exc()), attempts=attempt)
        return {"dead_lettered": str(error)}
    _fault_after_commit(service, event.event_type)
    outbox.relay(ids)
    return None


def _route(rt: Runtime, service: str, event: Envelope) -> tuple[Choreography, Subscription]:
    ch = choreographies.get(event.saga_type)
    sub = ch.subscription(event.event_type, service)
    if sub is None:
        raise MalformedEvent(f"service {service!r} has no handler for {ch.name}.{event.event_type}")
    ch.validate(event.event_type, event.payload)
    saga_type = rt.store.saga_type(event.saga_id)
    if saga_type != ch.name:
        raise MalformedEvent(f"no {ch.name} saga with id {event.saga_id!r}" if saga_type is None else
                             f"saga {event.saga_id} is a {saga_type}, not a {ch.name}")
    return ch, sub


def _handle(rt: Runtime, ch: Choreography, sub: Subscription, event: Envelope, attempt: int) -> list[int]:
    """Run the handler and record everything it did, in one transaction. Returns outbox row ids
    to relay. `EventAlreadyProcessed`: another delivery of the event committed first."""
    now = rt.clock()
    event = opened(rt, event)  # the handler reads sealed fields in clear; nothing below writes the payload
    with rt.store.event_unit() as u:
        ctx = EventContext(event=event, service=sub.service, choreography=ch, unit=u, attempt=attempt)
        token = _current.set(ctx)
        try:
            result = sub.call(ctx, event)
        finally:
            _current.reset(token)
        u.mark_processed(sub.service, event.event_id, saga_id=event.saga_id, now=now)  # the handler's writes first
        history.add(u, event.saga_id, "EventHandled", now, step=event.event_type, event_id=event.event_id,
                    consumer=sub.service, attempt=attempt, published=[e.event_type for e in ctx.emitted],
                    result=_as_json(result, sub))
        for e in ctx.emitted:
            outbox.write(u, e, ch.consumers(e.event_type), now)
        history.refresh(u, ch, event.saga_id, now)
    ids: list[int] = u.outbox_ids
    return ids


def opened(rt: Runtime, event: Envelope) -> Envelope:
    """`event` with its sealed payload fields opened (itself when it holds none). A process without
    the key raises `SealingError`: the handler's retry policy applies, as for a step."""
    payload = open_input(rt.sealer, event.payload, f"event {event.event_type} of saga {event.saga_id}")
    return event if payload is event.payload else event.model_copy(update={"payload": payload})


def _as_json(result: Any, sub: Subscription) -> Any:
    if result is None:
        return None
    if not isinstance(result, dict):
        raise TypeError(f"handler {sub.name!r} must return a dict or None, not {type(result).__name__}")
    return json.loads(json.dumps(result, default=str))


def _duplicate(rt: Runtime, service: str, event: Envelope) -> dict[str, Any]:
    _note(rt, event, "DuplicateEventIgnored", None, consumer=service)
    sent = outbox.relay_left_by(service, event.event_id)
    if sent:
        log.warning("relayed %d event(s) %s left unsent before a crash", sent, service,
                    extra={"saga_id": event.saga_id, "step": event.event_type})
    return {"duplicate": True, "relayed": sent}


def _note(rt: Runtime, event: Envelope, type_: str, attempt: int | None,
          waiting: tuple[Choreography, float] | None = None, **detail: Any) -> None:
    """One history row. `waiting`: a retry is scheduled in that many seconds, so the saga's
    deadline moves past it (the sweeper must not take a delivery waiting for its retry for a
    lost one and send a second copy, which would run its own retries)."""
    now = rt.clock()
    with rt.store.event_unit() as u:
        history.add(u, event.saga_id, type_, now, step=event.event_type, attempt=attempt,
                    event_id=event.event_id, **detail)
        if waiting is not None:
            ch, countdown = waiting
            u.push_deadline(event.saga_id, now + timedelta(seconds=countdown + ch.deadline))


def dead_letter(rt: Runtime, service: str, event: Envelope | None, raw: Any, message: MessageInfo,
                error: ErrorInfo, *, attempts: int) -> str:
    """Record a delivery that will not be handled, with the reason; the saga (if any) turns FAILED.

    One transaction: the dead letter (its broker copy not sent yet), the history, the saga's
    state. After the commit the copy goes to the broker's `dead_letter` queue and the row is
    marked sent; if that fails (or the process dies first) the sweeper sends it."""
    saga_id, event_type, _ = (event.saga_id, event.event_type, event.event_id) if event else salvage(raw)
    now = rt.clock()
    dl = DeadLetter(id=rt.ids(), kind="event", step=event_type, task=message.task_name, attempts=attempts,
                    error=error, message=message)
    with rt.store.event_unit() as u:
        saga = u.lock_saga(saga_id) if saga_id else None
        if saga is not None and event is None:
            history.add(u, saga.id, "EventRejected", now, step=event_type, consumer=service, reason=str(error))
        u.add_dead_letter(dl, saga_id=saga.id if saga else None, now=now)
        if saga is not None and saga.saga_type in choreographies:
            history.refresh(u, choreographies.get(saga.saga_type), saga.id, now)
    rt.loop.send_dead_letters((dl,), saga.id if saga else None)
    return dl.id


def _fault_after_commit(service: str, event_type: str) -> None:
    spec = os.environ.get(FAULT_VARIABLE, "")
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != service or parts[1] != event_type:
        return
    log.error("fault injection: %s dies after committing %s, before relaying its events", service, event_type)
    if len(parts) > 2 and parts[2] == "worker":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(70)
