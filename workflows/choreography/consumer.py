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
   (table + `dead_letter` queue) and the saga becomes FAILED until an operator redrives it.
The message is acknowledged late, after all of that: a worker killed at any line redelivers it.
"""
from __future__ import annotations

import logging
import os
import signal
import traceback as tb
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Task
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from workflows.core.errors import UnknownSaga
from workflows.store.models import ProcessedEventRow, SagaRow
from workflows.orchestration.step_task import INFRASTRUCTURE_ERRORS, publish_dead_letter
from workflows.runtime.container import Runtime, get_runtime
from workflows.store.sql import MessageInfo
from workflows.choreography import bus, history, outbox
from workflows.choreography.context import EventContext, _current
from workflows.choreography.declaration import Choreography, Subscription, choreographies
from workflows.choreography.envelope import Envelope, InvalidEvent, MalformedEvent, parse_envelope, salvage

log = logging.getLogger("workflows.choreography")

FAULT_VARIABLE = "SAGA_FAULT_KILL_AFTER_COMMIT"
"""Fault injection for tests and demos: `service:EventType` makes the handling process exit right
after its commit, before the relay; `service:EventType:worker` kills the whole worker."""


class _Duplicate(Exception):
    """Another delivery of the same event committed first."""


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
        dead_letter(rt, service, None, raw, message, f"{type(e).__name__}: {e}", attempts=0)
        return {"refused": str(e)}

    if _processed(rt, service, event.event_id):
        return _duplicate(rt, service, event)
    try:
        ids = _handle(rt, ch, sub, event, attempt)
    except _Duplicate:
        return _duplicate(rt, service, event)
    except INFRASTRUCTURE_ERRORS:
        raise  # the database or broker is down: Celery's autoretry, the handler's attempts untouched
    except Exception as exc:  # the handler's own error: its RetryPolicy decides
        retryable = sub.retry.is_retryable(exc) and not isinstance(exc, InvalidEvent)
        error = f"{type(exc).__name__}: {exc}"
        if retryable and attempt < sub.retry.max_attempts:
            countdown = sub.retry.countdown(attempt)
            _note(rt, event, "EventAttemptFailed", attempt, consumer=service, error=error, retry_in=round(countdown, 3),
                  waiting=(ch, countdown))
            raise task.retry(args=list(args), kwargs={**kwargs, "attempt": attempt + 1}, countdown=countdown,
                             exc=exc) from None
        _note(rt, event, "EventAttemptFailed", attempt, consumer=service, error=error, retry_in=None)
        dead_letter(rt, service, event, raw, message, error, attempts=attempt, traceback=tb.format_exc())
        return {"dead_lettered": error}
    _fault_after_commit(service, event.event_type)
    outbox.relay(ids)
    return None


def _route(rt: Runtime, service: str, event: Envelope) -> tuple[Choreography, Subscription]:
    ch = choreographies.get(event.saga_type)
    sub = ch.subscription(event.event_type, service)
    if sub is None:
        raise MalformedEvent(f"service {service!r} has no handler for {ch.name}.{event.event_type}")
    ch.validate(event.event_type, event.payload)
    with rt.store.sessions() as s:
        saga_type = s.scalar(select(SagaRow.saga_type).where(SagaRow.id == event.saga_id))
    if saga_type != ch.name:
        raise MalformedEvent(f"no {ch.name} saga with id {event.saga_id!r}" if saga_type is None else
                             f"saga {event.saga_id} is a {saga_type}, not a {ch.name}")
    return ch, sub


def _processed(rt: Runtime, service: str, event_id: str) -> bool:
    with rt.store.sessions() as s:
        return s.get(ProcessedEventRow, (service, event_id)) is not None


def _handle(rt: Runtime, ch: Choreography, sub: Subscription, event: Envelope, attempt: int) -> list[int]:
    """Run the handler and record everything it did, in one transaction. Returns outbox row ids."""
    now = datetime.now(timezone.utc)
    with rt.store.sessions.begin() as s:
        ctx = EventContext(event=event, service=sub.service, choreography=ch, session=s, attempt=attempt)
        token = _current.set(ctx)
        try:
            result = sub.call(ctx, event)
        finally:
            _current.reset(token)
        s.flush()  # the handler's own writes fail here as the handler's errors
        s.add(ProcessedEventRow(consumer=sub.service, event_id=event.event_id, saga_id=event.saga_id,
                                processed_at=now))
        try:
            s.flush()
        except IntegrityError:
            raise _Duplicate() from None
        history.add(s, event.saga_id, "EventHandled", now, step=event.event_type, event_id=event.event_id,
                    consumer=sub.service, attempt=attempt, published=[e.event_type for e in ctx.emitted],
                    result=_as_json(result, sub))
        rows = [outbox.write(s, e, ch.consumers(e.event_type), now) for e in ctx.emitted]
        history.refresh(s, ch, event.saga_id, now)
    return [r.id for r in rows if r.sent_at is None]


def _as_json(result: Any, sub: Subscription) -> Any:
    import json

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
    now = datetime.now(timezone.utc)
    with rt.store.sessions.begin() as s:
        history.add(s, event.saga_id, type_, now, step=event.event_type, attempt=attempt,
                    event_id=event.event_id, **detail)
        if waiting is not None:
            ch, countdown = waiting
            due = now + timedelta(seconds=countdown + ch.deadline)
            s.execute(update(SagaRow).where(SagaRow.id == event.saga_id, SagaRow.deadline_at < due)
                      .values(deadline_at=due).execution_options(synchronize_session=False))


def dead_letter(rt: Runtime, service: str, event: Envelope | None, raw: Any, message: MessageInfo, exception: str,
                *, attempts: int, traceback: str = "") -> str:
    """Record a delivery that will not be handled, with the reason; the saga (if any) turns FAILED.

    One transaction: the dead letter, the history, the saga's state. The copy on the broker's
    `dead_letter` queue is published before the commit (a failed commit redelivers the message
    and dead-letters it again: a duplicate on the queue, never a loss)."""
    saga_id, event_type, _ = (event.saga_id, event.event_type, event.event_id) if event else salvage(raw)
    now = datetime.now(timezone.utc)
    with rt.store.sessions.begin() as s:
        saga = history.lock_saga(s, saga_id) if saga_id else None
        if saga is not None and event is None:
            history.add(s, saga.id, "EventRejected", now, step=event_type, consumer=service, reason=exception)
        dl_id = rt.store.add_dead_letter(s, kind="event", task_name=message.task_name, exception=exception,
                                         message=message, saga_id=saga.id if saga else None, step=event_type,
                                         attempts=attempts, traceback=traceback)
        if saga is not None and saga.saga_type in choreographies:
            history.refresh(s, choreographies.get(saga.saga_type), saga.id, now)
        publish_dead_letter(rt, dl_id, message, saga_id=saga.id if saga else None, step=event_type, kind="event",
                            exception=exception, attempts=attempts, traceback=traceback)
    return dl_id


def _fault_after_commit(service: str, event_type: str) -> None:
    spec = os.environ.get(FAULT_VARIABLE, "")
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != service or parts[1] != event_type:
        return
    log.error("fault injection: %s dies after committing %s, before relaying its events", service, event_type)
    if len(parts) > 2 and parts[2] == "worker":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(70)
